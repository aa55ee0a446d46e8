-- Argo CD health of a finetune.dev FineTuneJob.
-- Progressing while it waits, queues, trains or uploads; Healthy when Completed; Degraded when Failed;
-- Suspended while spec.suspend holds it; Cancelled is Healthy when spec.cancel asked for it (the declared
-- state is reached) and Degraded otherwise. A status older than the spec is Progressing.
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

local function describe(phase, status)
  local text = phase
  if status.message ~= nil and status.message ~= "" then
    text = phase .. ": " .. status.message
  end
  if status.progress ~= nil and status.progress.summary ~= nil and status.progress.summary ~= "" then
    text = text .. " [" .. status.progress.summary .. "]"
  end
  return text
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the FineTuneJob"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase
hs.message = describe(phase, status)
local failed = condition(status, "Failed")

if phase == "Completed" then
  hs.status = "Healthy"
elseif phase == "Cancelled" then
  if obj.spec ~= nil and obj.spec.cancel == true then
    hs.status = "Healthy"
  else
    hs.status = "Degraded"
  end
elseif phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  if failed ~= nil and failed.reason ~= nil and (status.message == nil or status.message == "") then
    hs.message = phase .. ": " .. failed.reason
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
elseif phase == "Pending" or phase == "Queued" or phase == "Running" or phase == "Uploading" then
  hs.status = "Progressing"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
