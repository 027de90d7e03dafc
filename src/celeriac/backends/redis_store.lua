-- Store a task result and wake its readers, in one round trip, unless a SUCCESS is
-- already stored (Celery's dedupe guard: a redelivered duplicate must not overwrite a
-- good result). Celery compat: SETEX (or SET) plus PUBLISH on the key's own name, which
-- is the channel stock AsyncResult.get() listens on.
--
-- KEYS[1] celery-task-meta-<id>
-- ARGV[1] encoded result   ARGV[2] time to live in seconds (0: keep forever)
--
-- Returns 1 when stored, 0 when a SUCCESS was already there.

local function is_success(stored)
    -- Stock Celery and celeriac both write "status" first; read it without decoding
    -- a possibly large result.
    local found, _, status = string.find(string.sub(stored, 1, 96), '"status"%s*:%s*"([^"]*)"')
    if found then
        return status == 'SUCCESS'
    end
    local ok, value = pcall(cjson.decode, stored)
    if not ok then
        ok, value = pcall(cmsgpack.unpack, stored)
    end
    return ok and type(value) == 'table' and value.status == 'SUCCESS'
end

local current = redis.call('GET', KEYS[1])
if current and is_success(current) then
    return 0
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
    redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
