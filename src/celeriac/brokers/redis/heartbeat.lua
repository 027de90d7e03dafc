-- Refresh one consumer's presence record, stamped with the Redis server's clock (TIME),
-- never the client's: every consumer compares ages on the same clock.
--
-- KEYS[1] presence zset (consumer id -> last heartbeat)   KEYS[2] the consumer's record
-- ARGV[1] consumer id   ARGV[2] register ('1': create the record anew)
-- ARGV[3] record TTL (s)   ARGV[4] messages held   ARGV[5] running tags, space separated
-- ARGV[6..] field, value pairs of the record's identity (when registering)
--
-- Returns 1, or 0 when the record is gone or being reaped (the consumer was presumed
-- dead): it is not refreshed then, the consumer registers again.

local presence, record = KEYS[1], KEYS[2]
local time = redis.call('TIME')
local now = time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
if ARGV[2] == '1' then
    redis.call('DEL', record)
    if #ARGV >= 7 then
        redis.call('HSET', record, 'started', now, unpack(ARGV, 6))
    else
        redis.call('HSET', record, 'started', now)
    end
elseif redis.call('EXISTS', record) == 0 or redis.call('HEXISTS', record, 'reaping') == 1 then
    return 0
end
redis.call('HSET', record, 'heartbeat', now, 'held', ARGV[4], 'running', ARGV[5])
redis.call('EXPIRE', record, tonumber(ARGV[3]))
redis.call('ZADD', presence, now, ARGV[1])
return 1
