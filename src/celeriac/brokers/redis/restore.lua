-- Return leased messages to their queues (or drop them), atomically, for a batch of
-- tags: reject/requeue, recover of a dead consumer, and the visibility-timeout sweep.
--
-- The caller read the `unacked` entries and prepared each new envelope (flagged
-- redelivered, as kombu flags it) and its destination list; this script re-checks,
-- for every tag, that the lease is still the one the caller saw before acting, so a
-- message that was acked, renewed or handed to someone else in between is left alone:
--   * with a held key: the consumer that held key belongs to must still hold the lease
--     (its recorded score equals the score in unacked_index);
--   * without one (sweep): the lease must still be lapsed (score <= ARGV[1]).
--
-- KEYS[1] unacked   KEYS[2] unacked_index   KEYS[3] crashes
-- ARGV[1] sweep ceiling (epoch seconds; unused for held tags)
-- ARGV[2..] groups of 6: tag, held key or '', action, destination list, envelope, crashed
--   action R: push to the consuming end (consumed next, as kombu restores)
--          L: push to the back of the line (kombu's reject with requeue)
--          D: drop it (and its crash count)
--   crashed '1': the consumer died while running it; its crash count goes up by one
--
-- Returns {restored, dropped}.

local unacked, index, crashes = KEYS[1], KEYS[2], KEYS[3]
local ceiling = tonumber(ARGV[1])
local restored, dropped = 0, 0

local function still_leased(tag, held)
    local score = redis.call('ZSCORE', index, tag)
    if held == '' then
        return score ~= false and tonumber(score) <= ceiling
    end
    local record = redis.call('HGET', held, tag)
    if not record then
        return false
    end
    redis.call('HDEL', held, tag)
    local bar = string.find(record, '|', 1, true)
    local held_score = string.sub(record, 1, bar - 1)
    return score ~= false and tonumber(score) == tonumber(held_score)
end

for i = 2, #ARGV, 6 do
    local tag, held, action = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local destination, envelope, crashed = ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
    if still_leased(tag, held) then
        redis.call('ZREM', index, tag)
        redis.call('HDEL', unacked, tag)
        if action == 'D' then
            redis.call('HDEL', crashes, tag)
            dropped = dropped + 1
        else
            if crashed == '1' then
                redis.call('HINCRBY', crashes, tag, 1)
            end
            if action == 'L' then
                redis.call('LPUSH', destination, envelope)
            else
                redis.call('RPUSH', destination, envelope)
            end
            restored = restored + 1
        end
    end
end
return {restored, dropped}
