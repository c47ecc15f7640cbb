-- Adds ARGV[1] to the stream KEYS[1] (field d) and trims it: entries more
-- than ARGV[2] ms older than the new one go, and the oldest beyond ARGV[3]
-- entries. The last entry trimmed becomes the stream's max deleted entry
-- ID. The stream expires once its newest entry is twice the retention old,
-- so a new stream may follow one that expired: every ID older than that
-- counts as deleted in it. Returns the new entry's ID.
local key, retention, maxlen = KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fresh = redis.call('EXISTS', key) == 0
local id = redis.call('XADD', key, '*', 'd', ARGV[1])
local ms = tonumber(string.match(id, '^(%d+)-'))
local keep = string.format('%d-0', math.max(ms - retention, 0)) -- the first ID kept by age
local n = redis.call('XLEN', key)
-- The oldest entries, to the first kept by length (the oldest when none
-- is beyond maxlen). No XREVRANGE to an ID before the oldest: Redis walks
-- the whole stream for it.
local head = redis.call('XRANGE', key, '-', '+', 'COUNT', math.max(n - maxlen, 0) + 1)
if less(keep, head[#head][1]) then
  keep = head[#head][1]
end
if less(head[1][1], keep) then
  local gone = redis.call('XREVRANGE', key, '(' .. keep, '-', 'COUNT', 1)
  redis.call('XTRIM', key, 'MINID', keep)
  redis.call('XSETID', key, id, 'MAXDELETEDID', gone[1][1])
elseif fresh and ms > 2 * retention then
  redis.call('XSETID', key, id, 'MAXDELETEDID', string.format('%d-18446744073709551615', ms - 2 * retention - 1))
end
redis.call('PEXPIREAT', key, ms + 2 * retention + 1)
return id
