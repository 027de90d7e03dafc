-- Renew leases: move each tag's score in unacked_index forward (the sweep restores a
-- tag once score + visibility_timeout has passed), only while the consumer that owns
-- the held key still holds that lease (its recorded score equals the index score). A
-- lease that already lapsed and went to another consumer is not taken back.
--
-- KEYS[1] unacked_index
-- ARGV[1] new score (epoch seconds)   ARGV[2] held TTL (s)
-- ARGV[3..] pairs: tag, held key
--
-- Returns how many leases were renewed.

local index = KEYS[1]
local score, held_ttl = ARGV[1], tonumber(ARGV[2])
local renewed = 0
for i = 3, #ARGV, 2 do
    local tag, held = ARGV[i], ARGV[i + 1]
    local record = redis.call('HGET', held, tag)
    if record then
        local bar = string.find(record, '|', 1, true)
        local current = redis.call('ZSCORE', index, tag)
        if current and tonumber(current) == tonumber(string.sub(record, 1, bar - 1)) then
            redis.call('ZADD', index, 'XX', score, tag)
            redis.call('HSET', held, tag, score .. string.sub(record, bar))
            redis.call('EXPIRE', held, held_ttl)
            renewed = renewed + 1
        end
    end
end
return renewed
