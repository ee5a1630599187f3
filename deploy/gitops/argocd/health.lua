-- Argo CD health check for aws-jit.io AccessRequest (Lua 5.1, as Argo CD runs it: no
-- string library). Install: deploy/gitops/argocd/argocd-cm.yaml (the same script).
--   Pending, Approved          Progressing  the operator is at work
--   AwaitingApproval           Suspended    waiting on a person (an approver)
--   Scheduled                  Suspended    approved, waiting for its startAt
--   Active                     Healthy      access is held now
--   Expired, Revoked, Denied   Healthy      ended: finished work, nothing is granted
--   Rejected, Failed           Degraded     the manifest or the system needs a person
--   a revoke that keeps failing (Ready=False RevokeFailing), Tampered=True: Degraded
--   no status yet              Progressing
local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function said(text)
  if text == nil or text == "" then
    return ""
  end
  return ": " .. text
end

local hs = {}
local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the aws-jit operator to take the request up"
  return hs
end
local phase = status.phase
local message = status.message

local tampered = condition(status.conditions, "Tampered")
if tampered ~= nil and tampered.status == "True" then
  hs.status = "Degraded"
  hs.message = "tampered: " .. (tampered.message or "") .. said(message)
  return hs
end
local ready = condition(status.conditions, "Ready")
local revoked = condition(status.conditions, "Revoked")
if (ready ~= nil and ready.status == "False" and ready.reason == "RevokeFailing")
    or (revoked ~= nil and revoked.status == "False" and revoked.reason == "RevokeFailing") then
  hs.status = "Degraded"
  hs.message = "the operator cannot end this access yet (retrying)" .. said(message)
  return hs
end

if phase == "Pending" or phase == "Approved" then
  hs.status = "Progressing"
  hs.message = phase .. said(message)
elseif phase == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = "waiting for approval" .. said(message)
elseif phase == "Scheduled" then
  hs.status = "Suspended"
  hs.message = "scheduled" .. said(message)
elseif phase == "Active" then
  hs.status = "Healthy"
  hs.message = "access granted" .. said(message)
elseif phase == "Expired" or phase == "Revoked" or phase == "Denied" then
  hs.status = "Healthy"
  hs.message = "ended (" .. phase .. "), nothing is granted; to ask again, add a request with a new name" .. said(message)
elseif phase == "Rejected" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = phase .. said(message)
else
  hs.status = "Unknown"
  hs.message = "unknown phase " .. phase
end
return hs
