-- Record one finished chord header part and, for the part that completes the header,
-- hand back every part and clean up, atomically: exactly one caller gets the parts.
--
-- Celery compat: the keys and the rules are Celery 5.7's (celery/backends/redis.py),
-- so stock 5.5-5.7 workers reporting parts of the same chord count along:
--   .j  zset of '[1, task_id, state, result]' scored by group_index (a list when
--       result_chord_ordered is off), .t size delta (add_to_chord), .s chord size,
--   .d  set of '<task_id>:<group_index>' already counted (a redelivered part, even with
--       a different result, counts once), .c dispatch claim, then 'done' once fired.
--
-- KEYS[1] .j  KEYS[2] .t  KEYS[3] .s  KEYS[4] .d  KEYS[5] group key  KEYS[6] .c
-- ARGV[1] task id   ARGV[2] encoded part   ARGV[3] '1' ordered (zset) / '0' list
-- ARGV[4] score (group_index or '+inf')    ARGV[5] expires (s, 0: none)
-- ARGV[6] group key expires (s, 0: none)   ARGV[7] 'done' marker lifetime (s)
--
-- With a 7th key, the part's own result is stored first (KEYS[7] celery-task-meta-<id>,
-- ARGV[8] encoded result, ARGV[9] its time to live): `store_result` comes from
-- redis_store.lua, which the backend prefixes to this script.
--
-- Returns {-1} if the chord already fired, {ready count} while incomplete, and
-- {ready count, part, score, part, score, ...} (ordered) or {ready count, part, ...}
-- (list) to the caller that completes it.

local jkey, tkey, skey, dkey, gkey, ckey = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local tid, value, ordered, score = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local expires, group_expires = tonumber(ARGV[5]), tonumber(ARGV[6])
local done_expires = tonumber(ARGV[7])

if #KEYS == 7 then
    store_result(KEYS[7], ARGV[8], tonumber(ARGV[9]))
end

if redis.call('GET', ckey) == 'done' then
    return {-1}
end

local member = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, member) == 0 then
    if ordered then
        redis.call('ZADD', jkey, score, value)
    else
        redis.call('RPUSH', jkey, value)
    end
    redis.call('SADD', dkey, member)
end
local ready
if ordered then
    ready = redis.call('ZCOUNT', jkey, '-inf', '+inf')
else
    ready = redis.call('LLEN', jkey)
end
if expires > 0 then
    for _, key in ipairs({jkey, tkey, skey, dkey}) do
        redis.call('EXPIRE', key, expires)
    end
    if group_expires > 0 then
        redis.call('EXPIRE', gkey, group_expires)
    end
end

local size = redis.call('GET', skey)
if not size or ready ~= tonumber(size) + tonumber(redis.call('GET', tkey) or '0') then
    return {ready}
end
-- Complete. A stock worker that already claimed the dispatch keeps it.
if not redis.call('SET', ckey, 'done', 'NX', 'EX', done_expires) then
    return {ready}
end
local parts
if ordered then
    parts = redis.call('ZRANGE', jkey, 0, -1, 'WITHSCORES')
else
    parts = redis.call('LRANGE', jkey, 0, -1)
end
redis.call('DEL', jkey, tkey, skey, dkey)
local out = {ready}
for i = 1, #parts do
    out[i + 1] = parts[i]
end
return out
