-- Argo CD health of a finetune.dev Dataset.
-- Progressing while Pending or Validating; Healthy when Ready; Degraded when Invalid (the check report
-- in status says why). A status older than the spec is Progressing.
local hs = {}

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the Dataset"
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
  hs.status = "Healthy"
elseif phase == "Invalid" then
  hs.status = "Degraded"
elseif phase == "Pending" or phase == "Validating" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
