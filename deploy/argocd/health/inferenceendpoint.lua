-- Argo CD health of a finetune.dev InferenceEndpoint.
-- Progressing while Pending or Deploying, and while Ready but some declared adapter is not served yet
-- (condition AdaptersReady False); Healthy when Ready; Degraded when Failed. A status older than the spec is
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
  hs.message = "Waiting for the operator to pick up the InferenceEndpoint"
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

if phase == "Ready" then
  local adapters = condition(status, "AdaptersReady")
  if adapters ~= nil and adapters.status == "False" then
    hs.status = "Progressing"
    hs.message = "Ready, but not every adapter is served"
    if adapters.message ~= nil and adapters.message ~= "" then
      hs.message = hs.message .. ": " .. adapters.message
    end
  else
    hs.status = "Healthy"
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Pending" or phase == "Deploying" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
