-- Argo CD health of a finetune.dev Evaluation.
-- Progressing while Pending or Running; Healthy when Completed; Degraded when Failed, or when Completed with
-- the Passed condition False (the model did not meet spec.passCriterion). A status older than the spec is
-- Progressing.
local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the Evaluation"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
hs.message = phase
if status.message ~= nil and status.message ~= "" then
  hs.message = phase .. ": " .. status.message
end

if phase == "Completed" then
  local passed = condition(status, "Passed")
  if passed ~= nil and passed.status == "False" then
    hs.status = "Degraded"
    hs.message = "Completed, but the pass criterion is not met"
    if passed.message ~= nil and passed.message ~= "" then
      hs.message = hs.message .. ": " .. passed.message
    end
  else
    hs.status = "Healthy"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Pending" or phase == "Running" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
