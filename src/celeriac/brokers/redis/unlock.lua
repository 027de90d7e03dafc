-- Release the sweep mutex (unacked_mutex) only if we still hold it, as redis-py's
-- Lock does for kombu: a mutex that expired and was taken by another sweeper stays.
--
-- KEYS[1] unacked_mutex   ARGV[1] our token

if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
