-- every reservation of a dead owner (ARGV[2]) released at once
local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
local ids = redis.call('SMEMBERS', p .. 'own:' .. ARGV[2])
local released = 0
for _, id in ipairs(ids) do
  local items = redis.call('GET', p .. 'r:' .. id)
  if items then
    for _, it in ipairs(cjson.decode(items)) do
      local ck = p .. 'c:' .. it[1]
      local r = redis.call('HINCRBY', ck, 'r', n(-it[2]))
      if r < 0 then redis.call('HSET', ck, 'r', 0) end
    end
    redis.call('DEL', p .. 'r:' .. id)
    released = released + 1
  end
  redis.call('ZREM', p .. 'rexp', id)
end
redis.call('DEL', p .. 'own:' .. ARGV[2])
redis.call('HDEL', p .. 'owners', ARGV[2])
return released
