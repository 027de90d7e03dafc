-- Store a task result and wake its readers, unless a SUCCESS is already stored
-- (Celery's dedupe guard: a redelivered duplicate must not overwrite a good result).
-- Celery compat: SETEX (or SET) plus PUBLISH on the key's own name, which is the
-- channel stock AsyncResult.get() listens on.
--
-- A library, not a script: it defines `store_result(key, value, ttl)` (ttl in seconds,
-- 0: keep forever; returns 1 when stored, 0 when a SUCCESS was already there). The
-- backend prefixes it to the store script and to the chord script, so a chord header
-- part is stored and joined in one call (see backends/redis.py, `_compose`).

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

local function store_result(key, value, ttl)
    local current = redis.call('GET', key)
    if current and is_success(current) then
        return 0
    end
    if ttl > 0 then
        redis.call('SETEX', key, ttl, value)
    else
        redis.call('SET', key, value)
    end
    redis.call('PUBLISH', key, value)
    return 1
end
