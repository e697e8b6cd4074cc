-- a fragment: runs after sweep.lua or prelude.lua (uses their `p` and `n`)
-- counters that do not exist yet start from the ledger's spend (read just before by the caller);
-- one that exists is never re-seeded
for _, it in ipairs(cjson.decode(ARGV[7])) do
  local ck = p .. 'c:' .. it[1]
  if redis.call('EXISTS', ck) == 0 then
    redis.call('HSET', ck, 's', n(it[2]), 'r', 0)
    redis.call('EXPIRE', ck, 3456000)
  end
end
