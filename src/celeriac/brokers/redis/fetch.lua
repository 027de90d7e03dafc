-- Fetch one batch for a consumer, atomically, in one round trip:
--   1. promote delayed (ETA) messages that are due, for every queue, to the consuming end
--      of their list, earliest first;
--   2. pop up to `limit` messages from the consumed lists, in the order given (kombu's
--      priority-major order), oldest first (producers LPUSH, consumers take the tail);
--   3. lease each one exactly as kombu's ack emulation does (`unacked` hash: tag ->
--      JSON [envelope, exchange, routing_key]; `unacked_index` zset: tag -> delivery
--      time) so a stock worker's sweep can restore it and ours can restore theirs, and
--      record it in this consumer's `held` hash (tag -> "<score>|<queue>") for recover.
-- A popped message is never only in a process's memory: pop and lease are one step.
--
-- A retried call (same token, after a lost reply) returns the batch the first call
-- leased instead of taking a second one, so a connection drop strands nothing.
--
-- KEYS[1] unacked              KEYS[2] unacked_index       KEYS[3] held.<consumer>
-- KEYS[4] crashes              KEYS[5] delayed index       KEYS[6] last fetch record
-- KEYS[7..] the lists to pop, in order
-- ARGV[1] now (epoch seconds)  ARGV[2] limit               ARGV[3] fetch token
-- ARGV[4] held TTL (s)         ARGV[5] global key prefix   ARGV[6] priority separator
-- ARGV[7] priority steps, comma separated                  ARGV[8] promotion budget
-- ARGV[9] delayed zset key prefix (global prefix included)
-- ARGV[10] n, the number of tags this consumer acks first (0: none), then n tags
-- ARGV[11 + n..] queue name of each list in KEYS[7..]
--
-- Returns {next_due or false, replayed (0/1), then per message: list number (1-based
-- into KEYS[7..]), payload, tag, crashes}. The payload is the raw envelope, or the
-- `unacked` entry when replayed.

local unacked, index, held, crashes, delayed_index, last_fetch =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = ARGV[1]
local limit = tonumber(ARGV[2])
local token = ARGV[3]
local held_ttl = tonumber(ARGV[4])
local prefix, sep = ARGV[5], ARGV[6]
local budget = tonumber(ARGV[8])
local delayed_prefix = ARGV[9]
local FIRST_LIST = 7
local ACKS = tonumber(ARGV[10])
local FIRST_QUEUE = 11 + ACKS

-- Acks of the previous batch ride along (kombu's ack, and this consumer's records).
-- Removing is idempotent, so a retried call (below) may do it again.
if ACKS > 0 then
    for i = 11, 10 + ACKS, 500 do
        local last = math.min(i + 499, 10 + ACKS)
        redis.call('ZREM', index, unpack(ARGV, i, last))
        redis.call('HDEL', unacked, unpack(ARGV, i, last))
        redis.call('HDEL', held, unpack(ARGV, i, last))
        redis.call('HDEL', crashes, unpack(ARGV, i, last))
    end
end

local steps = {}
for step in string.gmatch(ARGV[7], '[^,]+') do
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

local function decode(raw)
    local ok, envelope = pcall(cjson.decode, raw)
    if ok and type(envelope) == 'table' and type(envelope.properties) == 'table' then
        return envelope.properties
    end
    return nil
end

-- The lease needs three fields of the envelope. kombu writes "properties" last, with
-- delivery_tag and delivery_info inside: find them as text, which costs a fraction of
-- decoding the whole envelope. The sequence `"properties":` cannot occur inside a JSON
-- string (its quotes would be escaped), and the last one is the envelope's own (a
-- header of that name comes earlier). Anything unusual (escapes in the values, another
-- layout) falls back to a full decode.
local function lease_fields(raw)
    local start = string.find(raw, '"properties":', 1, true)
    while start do
        local later = string.find(raw, '"properties":', start + 1, true)
        if not later then
            break
        end
        start = later
    end
    if start then
        local tag = string.match(raw, '"delivery_tag":%s*"([^"\\]*)"', start)
        local exchange = string.match(raw, '"exchange":%s*"([^"\\]*)"', start)
        local routing_key = string.match(raw, '"routing_key":%s*"([^"\\]*)"', start)
        if tag and exchange and routing_key then
            return tag, exchange, routing_key
        end
    end
    local props = decode(raw)
    if not props then
        return nil, nil, nil
    end
    local info = props.delivery_info
    if type(info) == 'table' then
        return props.delivery_tag, info.exchange, info.routing_key
    end
    return props.delivery_tag, nil, nil
end

local function next_due()
    return redis.call('ZRANGE', delayed_index, 0, 0, 'WITHSCORES')[2] or false
end

-- 0. A retry of a call whose reply was lost: hand out what it leased.
local last = redis.call('GET', last_fetch)
if last then
    local lines = {}
    for line in string.gmatch(last, '[^\n]+') do
        lines[#lines + 1] = line
    end
    if lines[1] == token then
        local out = {next_due(), 1}
        for i = 2, #lines do
            local tab = string.find(lines[i], '\t', 1, true)
            local tag = string.sub(lines[i], 1, tab - 1)
            local entry = redis.call('HGET', unacked, tag)
            if entry then
                out[#out + 1] = tonumber(string.sub(lines[i], tab + 1))
                out[#out + 1] = entry
                out[#out + 1] = tag
                out[#out + 1] = tonumber(redis.call('HGET', crashes, tag) or '0')
            end
        end
        return out
    end
end

-- 1. Promote due ETA messages, whichever queue they are for.
local due_queues = redis.call('ZRANGEBYSCORE', delayed_index, '-inf', now, 'LIMIT', 0, 64)
for _, queue in ipairs(due_queues) do
    if budget <= 0 then
        break
    end
    local zkey = delayed_prefix .. queue
    local due = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, budget)
    -- RPUSH latest first, so the earliest due ends at the tail and is consumed first.
    for i = #due, 1, -1 do
        local props = decode(due[i])
        local priority = props and props.priority or 0
        redis.call('RPUSH', list_key(queue, step_for(priority)), due[i])
    end
    for i = 1, #due, 500 do
        redis.call('ZREM', zkey, unpack(due, i, math.min(i + 499, #due)))
    end
    budget = budget - #due
    local first = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
    if first[2] then
        redis.call('ZADD', delayed_index, first[2], queue)
    else
        redis.call('ZREM', delayed_index, queue)
    end
end

-- 2 and 3. Pop and lease.
local out = {next_due(), 0}
local got = 0
local unacked_args, index_args, held_args, tags, record = {}, {}, {}, {}, {token}
for i = FIRST_LIST, #KEYS do
    if got >= limit then
        break
    end
    local items = redis.call('RPOP', KEYS[i], limit - got)
    if items then
        local queue = ARGV[FIRST_QUEUE + i - FIRST_LIST]
        local list_number = i - FIRST_LIST + 1
        for _, raw in ipairs(items) do
            got = got + 1
            local tag, exchange, routing_key = lease_fields(raw)
            -- A message without a usable tag (hand-made, malformed) still gets a lease,
            -- under a tag of ours, so the worker can dead-letter it instead of losing it.
            if type(tag) ~= 'string' or tag == '' then
                tag = 'celeriac-' .. token .. '-' .. got
            end
            if type(exchange) ~= 'string' then
                exchange = ''
            end
            if type(routing_key) ~= 'string' then
                routing_key = queue
            end
            -- kombu writes dumps([envelope, exchange, routing_key]); the envelope is
            -- spliced in as received, byte for byte, never re-encoded.
            unacked_args[#unacked_args + 1] = tag
            unacked_args[#unacked_args + 1] = '[' .. raw .. ', ' .. cjson.encode(exchange)
                .. ', ' .. cjson.encode(routing_key) .. ']'
            index_args[#index_args + 1] = now
            index_args[#index_args + 1] = tag
            held_args[#held_args + 1] = tag
            held_args[#held_args + 1] = now .. '|' .. queue
            tags[#tags + 1] = tag
            record[#record + 1] = tag .. '\t' .. list_number
            out[#out + 1] = list_number
            out[#out + 1] = raw
            out[#out + 1] = tag
            out[#out + 1] = 0
        end
    end
end

if got > 0 then
    redis.call('HSET', unacked, unpack(unacked_args))
    redis.call('ZADD', index, unpack(index_args))
    redis.call('HSET', held, unpack(held_args))
    redis.call('EXPIRE', held, held_ttl)
    local counts = redis.call('HMGET', crashes, unpack(tags))
    for i = 1, got do
        out[2 + 4 * i] = tonumber(counts[i] or '0')
    end
    redis.call('SET', last_fetch, table.concat(record, '\n'), 'EX', 600)
end
return out
