-- releases reservations past their expiry (at most 100 per call); the head of reserve and lease
local p = ARGV[1]
-- integers as digits (Lua would print 1e+15 style); amounts stay below 2^53
local function n(x) return string.format('%.0f', x) end
local now = tonumber(ARGV[3])
local function sweep()
  local due = redis.call('ZRANGEBYSCORE', p .. 'rexp', '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(due) do
    local items = redis.call('GET', p .. 'r:' .. id)
    if items then
      for _, it in ipairs(cjson.decode(items)) do
        local ck = p .. 'c:' .. it[1]
        local r = redis.call('HINCRBY', ck, 'r', n(-it[2]))
        if r < 0 then redis.call('HSET', ck, 'r', 0) end
      end
      redis.call('DEL', p .. 'r:' .. id)
    end
    redis.call('ZREM', p .. 'rexp', id)
  end
end
sweep()
