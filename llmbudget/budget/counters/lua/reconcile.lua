-- ARGV[2]: [[counter, ledger spend, {ledgered ids: priced 1/0}], ...] read from the ledger just before
local p = ARGV[1]
local function n(x) return string.format('%.0f', x) end
local out = {}
for _, c in ipairs(cjson.decode(ARGV[2])) do
  local ck, pk, seen = p .. 'c:' .. c[1], p .. 'p:' .. c[1], c[3]
  local un, kept = 0, 0
  local rows = redis.call('HGETALL', pk)
  for i = 1, #rows, 2 do
    local id, v = rows[i], rows[i + 1]
    local sep = string.find(v, ':', 1, true)
    local a, k = tonumber(string.sub(v, 1, sep - 1)), tonumber(string.sub(v, sep + 1))
    local priced = seen[id]
    if priced == nil then
      un = un + a
      kept = kept + k
    elseif priced == 1 or k == 0 then
      redis.call('HDEL', pk, id)
    else
      kept = kept + k
      if a ~= 0 then redis.call('HSET', pk, id, '0:' .. n(k)) end
    end
  end
  local before = tonumber(redis.call('HGET', ck, 's') or '') or -1
  local after = c[2] + un + kept
  redis.call('HSET', ck, 's', n(after))
  if before < 0 then redis.call('HSET', ck, 'r', 0) end
  redis.call('EXPIRE', ck, 3456000)
  table.insert(out, {n(before), n(after), n(un), n(kept)})
end
return out
