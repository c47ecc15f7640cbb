-- Reads the stream KEYS[1] after the ID ARGV[1] ("": after the newest),
-- at most ARGV[2] entries; ARGV[3] is the retention in ms. Returns
-- {missed, position, entries}: missed is 1 when an entry after ARGV[1] is
-- gone (trimmed, or expired with its stream) or ARGV[1] is after every ID
-- the stream gave, never for ARGV[1] 0-0 (all there is); position is
-- where reading goes on when no entry came.
local key, after, count, retention = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local last, deleted
if redis.call('EXISTS', key) == 1 then
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      last = info[i + 1]
    elseif info[i] == 'max-deleted-entry-id' then
      deleted = info[i + 1]
    end
  end
else
  -- Nothing was published, or the stream expired, its newest entry twice
  -- the retention old: an ID older than that may have had successors.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  last = string.format('%d-18446744073709551615', now - 1) -- before any ID XADD gives from now on
  deleted = string.format('%d-18446744073709551615', math.max(now - 2 * retention - 1, 0))
end
if after == '' then
  return {0, last, {}}
end
if less(last, after) then
  return {1, last, {}}
end
local missed = 0
if after ~= '0-0' and less(after, deleted) then
  missed = 1
end
return {missed, after, redis.call('XRANGE', key, '(' .. after, '+', 'COUNT', count)}
