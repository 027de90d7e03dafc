-- Remove a consumer's presence record once its messages are back (after a reap, a
-- supervisor's recover, or a clean exit).
--
-- KEYS[1] presence zset   KEYS[2] the consumer's record
-- ARGV[1] consumer id   ARGV[2] reaper token ('' : remove unconditionally)
--
-- With a token, the record goes only if this reaper still owns the reap: a consumer that
-- was alive after all and registered again keeps its new record. Returns 1 if removed.

local presence, record = KEYS[1], KEYS[2]
if ARGV[2] ~= '' and redis.call('HGET', record, 'reaping') ~= ARGV[2] then
    return 0
end
redis.call('ZREM', presence, ARGV[1])
redis.call('DEL', record)
return 1
