local p = ARGV[1]
local ids = redis.call('ZRANGE', p .. 'rexp', 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local items = redis.call('GET', p .. 'r:' .. id)
  if items then table.insert(out, items) end
end
return out
