-- Reserve the next start slot of a cluster-wide rate limit: max(now, last slot +
-- interval), stored for the next caller. Every process sharing the key is spaced
-- `interval` apart, atomically.
--
-- KEYS[1] the rate key
-- ARGV[1] now (epoch seconds)   ARGV[2] interval (seconds)
--
-- Returns the slot as a string (a Lua number would be truncated to an integer).

local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local previous = tonumber(redis.call('GET', KEYS[1]) or '')
local slot = now
if previous and previous + interval > now then
    slot = previous + interval
end
local text = string.format('%.6f', slot)
-- Keep the key only while it can still push a caller back.
local ttl_ms = math.max(1, math.ceil((slot - now + interval) * 1000))
redis.call('SET', KEYS[1], text, 'PX', ttl_ms)
return text
