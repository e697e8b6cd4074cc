local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
local items = redis.call('GET', p .. 'r:' .. ARGV[2])
if items then
  for _, it in ipairs(cjson.decode(items)) do
    local ck = p .. 'c:' .. it[1]
    local r = redis.call('HINCRBY', ck, 'r', n(-it[2]))
    if r < 0 then redis.call('HSET', ck, 'r', 0) end
  end
  redis.call('DEL', p .. 'r:' .. ARGV[2])
  redis.call('ZREM', p .. 'rexp', ARGV[2])
  local owner = string.match(ARGV[2], '^(.*)/')
  if owner then redis.call('SREM', p .. 'own:' .. owner, ARGV[2]) end
end
for _, it in ipairs(cjson.decode(ARGV[3])) do
  local ck = p .. 'c:' .. it[1]
  redis.call('HINCRBY', ck, 's', n(it[2]))
  redis.call('EXPIRE', ck, 3456000)
end
-- pending until the event is in the ledger: "amount the ledger will show:amount kept beside it"
if ARGV[4] and ARGV[4] ~= '' then
  for _, it in ipairs(cjson.decode(ARGV[5])) do
    local pk = p .. 'p:' .. it[1]
    redis.call('HSET', pk, ARGV[4], n(it[2]) .. ':' .. n(it[3]))
    redis.call('EXPIRE', pk, 3456000)
  end
end
return 1
