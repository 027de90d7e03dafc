-- Claim the consumers silent for longer than `lost_after` (by the server's clock), for
-- one reaper: each one's heartbeat score moves to now, so no other reaper claims it for
-- another `lost_after` (if this reaper dies midway, the next one starts over), and its
-- record is marked `reaping` with this reaper's token, so the consumer, should it still
-- be alive, learns that it was presumed dead. Returning the messages is per tag
-- (`restore.lua`), so even two reapers return each message once.
--
-- KEYS[1] presence zset
-- ARGV[1] lost_after (s)   ARGV[2] record key prefix   ARGV[3] most to claim
-- ARGV[4] token   ARGV[5] record TTL (s)
--
-- Returns {consumer id, running tags (space separated), ...}.

local presence = KEYS[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local ceiling = string.format('%.6f', now - tonumber(ARGV[1]))
local silent = redis.call('ZRANGEBYSCORE', presence, '-inf', ceiling, 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(silent) do
    local record = ARGV[2] .. id
    redis.call('ZADD', presence, string.format('%.6f', now), id)
    redis.call('HSET', record, 'reaping', ARGV[4])
    redis.call('EXPIRE', record, tonumber(ARGV[5]))
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', record, 'running') or ''
end
return out
