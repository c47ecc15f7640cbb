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
if n > maxlen then
  local old = redis.call('XRANGE', key, '-', '+', 'COUNT', n - maxlen + 1)
  local byLen = old[#old][1] -- the first ID kept by length
  if less(keep, byLen) then keep = byLen end
end
if keep ~= '0-0' then
  local gone = redis.call('XREVRANGE', key, '(' .. keep, '-', 'COUNT', 1)
  if #gone > 0 then
    redis.call('XTRIM', key, 'MINID', keep)
    redis.call('XSETID', key, id, 'MAXDELETEDID', gone[1][1])
  elseif fresh and ms > 2 * retention then
    redis.call('XSETID', key, id, 'MAXDELETEDID', string.format('%d-18446744073709551615', ms - 2 * retention - 1))
  end
end
redis.call('PEXPIREAT', key, ms + 2 * retention + 1)
return id
