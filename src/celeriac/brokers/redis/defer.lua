-- Hand a leased message back to wait for its ETA, atomically and in one round trip: the
-- lease ends and the delayed copy appears together (or, when the ETA has passed by now,
-- the message goes to the back of its list), so a crash can neither lose nor duplicate
-- it. Only while this consumer still holds the lease (its `held` record's score equals
-- the score in unacked_index, as for renewals): a lease that lapsed and was restored to
-- the queue belongs to whoever takes it next, and a second, delayed copy would run twice.
--
-- KEYS[1] unacked   KEYS[2] unacked_index   KEYS[3] held.<consumer>
-- KEYS[4] destination: the queue's delayed zset, or its list when already due
-- KEYS[5] delayed index
-- ARGV[1] tag   ARGV[2] envelope   ARGV[3] due time (epoch seconds)   ARGV[4] queue
-- ARGV[5] 'Z' (wait in the delayed zset) or 'L' (due already: LPUSH to the list)
--
-- Returns 1 when moved, 0 when the lease was no longer this consumer's (left alone).

local unacked, index, held, destination, delayed_index =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local tag, envelope, due, queue, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local record = redis.call('HGET', held, tag)
if not record then
    return 0
end
local bar = string.find(record, '|', 1, true)
local score = redis.call('ZSCORE', index, tag)
if not score or tonumber(score) ~= tonumber(string.sub(record, 1, bar - 1)) then
    redis.call('HDEL', held, tag)
    return 0
end
redis.call('ZREM', index, tag)
redis.call('HDEL', unacked, tag)
redis.call('HDEL', held, tag)
if mode == 'Z' then
    redis.call('ZADD', destination, due, envelope)
    -- LT: the index keeps each queue's earliest due time.
    redis.call('ZADD', delayed_index, 'LT', due, queue)
else
    redis.call('LPUSH', destination, envelope)
end
return 1
