-- Reads the stream KEYS[1] after the ID ARGV[1] ("": after the newest),
-- at most ARGV[2] entries; ARGV[3] is the retention in ms; ARGV[4] is
-- Redis's time (ms) when the reader last found nothing after ARGV[1], or
-- "". Returns {missed, position, entries, now, caught up}: missed is 1
-- when an entry after ARGV[1] may be gone, or ARGV[1] is after every ID
-- the stream gave, never for ARGV[1] 0-0 (all there is); position is
-- where reading goes on when no entry came; caught up is 1 when nothing
-- follows the last entry returned (or the position).
local key, after, count, retention, since = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
  last = string.format('%d-18446744073709551615', now - 1) -- before any ID XADD gives from now on
  deleted = string.format('%d-18446744073709551615', math.max(now - 2 * retention - 1, 0))
end
if after == '' then
  return {0, last, {}, now, 1}
end
if less(last, after) then
  return {1, last, {}, now, 1}
end
-- A deleted ID of sequence 2^64-1 is no entry's: it marks what an expired
-- stream may have held. Where the reader found nothing after ARGV[1] less
-- than two retentions ago, nothing did: an entry published since would
-- have kept its stream that long.
local expired = string.sub(deleted, -21) == '-18446744073709551615'
local watched = since ~= '' and now <= tonumber(since) + 2 * retention
local missed = 0
if after ~= '0-0' and less(after, deleted) and not (expired and watched) then
  missed = 1
end
local entries = redis.call('XRANGE', key, '(' .. after, '+', 'COUNT', count)
local caught = 0
if #entries < count then
  caught = 1
end
return {missed, after, entries, now, caught}
