-- Publish one ETA message where it will run on time, decided atomically with the
-- presence records: while a celeriac consumer is alive (a heartbeat within lost_after,
-- by the server's clock) it waits in the queue's delayed set, promoted when due by any
-- celeriac consumer; with none, it goes straight to its list as kombu publishes it (its
-- `eta` header makes a stock Celery worker hold it until due), since no stock worker
-- reads the delayed set. Being one script, it cannot interleave with the hand-off of the
-- delayed set (`handoff.lua`) after the last celeriac consumer left.
--
-- KEYS[1] presence zset   KEYS[2] the queue's delayed zset   KEYS[3] delayed index
-- KEYS[4] the queue's list for the message's priority
-- ARGV[1] lost_after (s)   ARGV[2] due (epoch seconds)   ARGV[3] envelope   ARGV[4] queue
--
-- Returns 1 when delayed broker-side, 0 when pushed to the list.

local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local alive = string.format('%.6f', now - tonumber(ARGV[1]))
if #redis.call('ZRANGEBYSCORE', KEYS[1], alive, '+inf', 'LIMIT', 0, 1) > 0 then
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
    -- LT: the index keeps each queue's earliest due time.
    redis.call('ZADD', KEYS[3], 'LT', ARGV[2], ARGV[4])
    return 1
end
redis.call('LPUSH', KEYS[4], ARGV[3])
return 0
