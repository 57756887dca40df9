-- Argo CD resource health for bootstraptoken.dev/BootstrapToken (kstatus semantics):
-- Ready=True at the current generation -> Healthy; Ready=False -> Degraded; otherwise Progressing.
local hs = {}
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      local generation = obj.metadata.generation
      if generation ~= nil and condition.observedGeneration ~= nil and condition.observedGeneration < generation then
        hs.status = "Progressing"
        hs.message = "Waiting for the operator to observe generation " .. generation
        return hs
      end
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.status == "False" then
        hs.status = "Degraded"
      else
        hs.status = "Progressing"
      end
      hs.message = (condition.reason or "") .. ": " .. (condition.message or "")
      return hs
    end
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the token to be issued"
return hs
