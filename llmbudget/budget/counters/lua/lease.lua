-- a fragment: runs after sweep.lua and seed.lua (uses `p`, `n` and `now`)
-- ARGV[2] lease id, ARGV[4] grow charges, ARGV[5] grow items, ARGV[6] ttl, ARGV[8] spends
-- [[[key, amount], ...], [[key, event, amount shown, amount kept], ...]] (each summed per key, and
-- per event and key), ARGV[9] give back {key: amount}, ARGV[10] calls {key: n}, ARGV[11] keys
local rk = p .. 'r:' .. ARGV[2]
local held = {}
local raw = redis.call('GET', rk)
if raw then
  for _, it in ipairs(cjson.decode(raw)) do held[it[1]] = {it[2], it[3] or 0} end
end
local function take(key, amount)
  local h = held[key]
  if h and amount > 0 then
    local t = math.min(h[1], amount)
    h[1] = h[1] - t
    if t > 0 then
      local r = redis.call('HINCRBY', p .. 'c:' .. key, 'r', n(-t))
      if r < 0 then redis.call('HSET', p .. 'c:' .. key, 'r', 0) end
    end
  end
end
local spends = cjson.decode(ARGV[8])
for _, sp in ipairs(spends[1]) do
  local ck = p .. 'c:' .. sp[1]
  redis.call('HINCRBY', ck, 's', n(sp[2]))
  redis.call('EXPIRE', ck, 3456000)
  take(sp[1], sp[2])
end
local pending = {}
for _, pe in ipairs(spends[2]) do
  local pk = p .. 'p:' .. pe[1]
  if redis.call('HSETNX', pk, pe[2], n(pe[3]) .. ':' .. n(pe[4])) == 0 then
    -- the event settled on this counter before (a retried batch): add up
    local old = redis.call('HGET', pk, pe[2])
    local sep = string.find(old, ':', 1, true)
    local a, k = tonumber(string.sub(old, 1, sep - 1)), tonumber(string.sub(old, sep + 1))
    redis.call('HSET', pk, pe[2], n(a + pe[3]) .. ':' .. n(k + pe[4]))
  end
  pending[pk] = true
end
for pk, _ in pairs(pending) do redis.call('EXPIRE', pk, 3456000) end
for key, amount in pairs(cjson.decode(ARGV[9])) do take(key, amount) end
local refusal = {0, 0, 0}
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
      refusal = {i, s, r}
      break
    end
  end
end
if refusal[1] == 0 then
  for _, it in ipairs(cjson.decode(ARGV[5])) do
    local ck = p .. 'c:' .. it[1]
    redis.call('HINCRBY', ck, 'r', n(it[2]))
    redis.call('EXPIRE', ck, 3456000)
    if not held[it[1]] then held[it[1]] = {0, 0} end
    held[it[1]][1] = held[it[1]][1] + it[2]
  end
end
for key, cnt in pairs(cjson.decode(ARGV[10])) do
  if not held[key] then held[key] = {0, 0} end
  held[key][2] = cnt
end
local items = {}
local names = {}
for key, _ in pairs(held) do table.insert(names, key) end
table.sort(names)
for _, key in ipairs(names) do
  local h = held[key]
  if h[1] > 0 or h[2] > 0 then table.insert(items, {key, h[1], h[2]}) end
end
local out_held = {}
for _, key in ipairs(names) do table.insert(out_held, {key, n(held[key][1])}) end
if #items > 0 then
  redis.call('SET', rk, cjson.encode(items))
  redis.call('ZADD', p .. 'rexp', now + tonumber(ARGV[6]), ARGV[2])
  local owner = string.match(ARGV[2], '^(.*)/')
  if owner then
    redis.call('SADD', p .. 'own:' .. owner, ARGV[2])
    redis.call('EXPIRE', p .. 'own:' .. owner, 3456000)
  end
elseif raw then
  redis.call('DEL', rk)
  redis.call('ZREM', p .. 'rexp', ARGV[2])
end
local totals = {}
for _, key in ipairs(cjson.decode(ARGV[11])) do
  local v = redis.call('HMGET', p .. 'c:' .. key, 's', 'r')
  table.insert(totals, {key, v[1] or '', v[2] or ''})
end
return {refusal, out_held, totals}
