-- Hand the delayed sets to the lists when no celeriac consumer is alive (no heartbeat
-- within lost_after, by the server's clock): each message goes to its queue's list with
-- its `eta` header, as kombu publishes an ETA message, so stock Celery workers run it on
-- time instead of it waiting for a celeriac consumer that may never come. Earliest due
-- first, at most `budget` messages per call (the caller repeats until 0).
--
-- KEYS[1] presence zset   KEYS[2] delayed index
-- ARGV[1] lost_after (s)   ARGV[2] global key prefix   ARGV[3] priority separator
-- ARGV[4] priority steps, comma separated   ARGV[5] budget
-- ARGV[6] delayed zset key prefix (global prefix included)
--
-- Returns how many messages were handed over, or -1 when a celeriac consumer is alive.

local presence, delayed_index = KEYS[1], KEYS[2]
local prefix, sep, budget, delayed_prefix = ARGV[2], ARGV[3], tonumber(ARGV[5]), ARGV[6]
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local alive = string.format('%.6f', now - tonumber(ARGV[1]))
if #redis.call('ZRANGEBYSCORE', presence, alive, '+inf', 'LIMIT', 0, 1) > 0 then
    return -1
end

local steps = {}
for step in string.gmatch(ARGV[4], '[^,]+') do
    steps[#steps + 1] = tonumber(step)
end

-- kombu's Channel.priority: the largest step <= priority (clamped to 0..9).
local function step_for(priority)
    priority = math.max(0, math.min(9, math.floor(tonumber(priority) or 0)))
    local chosen = steps[#steps]
    for i = 1, #steps do
        if steps[i] <= priority then
            chosen = steps[i]
        else
            break
        end
    end
    return chosen
end

local function list_key(queue, step)
    if step == 0 then
        return prefix .. queue
    end
    return prefix .. queue .. sep .. step
end

local moved = 0
for _, queue in ipairs(redis.call('ZRANGE', delayed_index, 0, 63)) do
    if moved >= budget then
        break
    end
    local zkey = delayed_prefix .. queue
    local waiting = redis.call('ZRANGE', zkey, 0, budget - moved - 1)
    for _, raw in ipairs(waiting) do
        local ok, envelope = pcall(cjson.decode, raw)
        local priority = 0
        if ok and type(envelope) == 'table' and type(envelope.properties) == 'table' then
            priority = envelope.properties.priority or 0
        end
        -- LPUSH, earliest first: kombu's producers push at the head, consumers pop the tail.
        redis.call('LPUSH', list_key(queue, step_for(priority)), raw)
    end
    for i = 1, #waiting, 500 do
        redis.call('ZREM', zkey, unpack(waiting, i, math.min(i + 499, #waiting)))
    end
    moved = moved + #waiting
    if redis.call('ZCARD', zkey) == 0 then
        redis.call('ZREM', delayed_index, queue)
    end
end
return moved
