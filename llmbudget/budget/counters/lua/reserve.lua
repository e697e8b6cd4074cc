-- a fragment: runs after sweep.lua and seed.lua (uses `p`, `n` and `now`)
local charges = cjson.decode(ARGV[4])
for i, c in ipairs(charges) do
  if c.l >= 0 then
    local s, r = 0, 0
    for _, k in ipairs(c.r) do
      local v = redis.call('HMGET', p .. 'c:' .. k, 's', 'r')
      s = s + (tonumber(v[1]) or 0)
      r = r + (tonumber(v[2]) or 0)
    end
    if s + r + c.a > c.l then
      return {i, s, r}
    end
  end
end
local items = cjson.decode(ARGV[5])
for _, it in ipairs(items) do
  local ck = p .. 'c:' .. it[1]
  redis.call('HINCRBY', ck, 'r', n(it[2]))
  redis.call('EXPIRE', ck, 3456000)
end
redis.call('SET', p .. 'r:' .. ARGV[2], ARGV[5])
redis.call('ZADD', p .. 'rexp', now + tonumber(ARGV[6]), ARGV[2])
local owner = string.match(ARGV[2], '^(.*)/')
if owner then
  redis.call('SADD', p .. 'own:' .. owner, ARGV[2])
  redis.call('EXPIRE', p .. 'own:' .. owner, 3456000)
end
return {0, 0, 0}
