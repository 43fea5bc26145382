-- core: extension, configuration, the SQL cache functions and their errors
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS meetcache;
RESET client_min_messages;
SELECT extversion FROM pg_extension WHERE extname = 'meetcache';
SELECT meetcache.cache_ping();
SELECT meetcache.cache_del_pattern('*') >= 0 AS flushed;

-- raw Redis access for the checks below
SELECT substring(current_setting('meetcache.redis_url') from ':(\d+)/') AS redis_port \gset
\setenv REDIS_PORT :redis_port

-- set / get / exists / ttl, values stored compact like JSON.stringify
SELECT meetcache.cache_set('k:1', '{"b": [1, 2, {"c": "x y"}], "a": null}', 100);
\! redis-cli -p $REDIS_PORT GET k:1
SELECT meetcache.cache_get('k:1');
SELECT meetcache.cache_get('k:missing') IS NULL AS miss;
SELECT meetcache.cache_exists('k:1'), meetcache.cache_exists('k:missing');
SELECT meetcache.cache_ttl('k:1') BETWEEN 95 AND 100 AS ttl_ok, meetcache.cache_ttl('k:missing') AS missing_ttl;
-- values written by the application are read back
\! redis-cli -p $REDIS_PORT SET app:1 '{"id":"m1","title":"Standup","host":{"id":"u1","name":"Ann"}}' > /dev/null
SELECT meetcache.cache_get('app:1') -> 'host' ->> 'name' AS host_name;
\! redis-cli -p $REDIS_PORT SET app:persist '1' > /dev/null
SELECT meetcache.cache_ttl('app:persist') AS no_expiry;

-- a key without a TTL takes its family's default
SELECT meetcache.cache_set(meetcache.key('meeting', 'm9'), '1');
SELECT meetcache.cache_ttl('meeting:m9') BETWEEN 590 AND 600 AS family_ttl;
SELECT meetcache.cache_set('nofamily', '1');

-- key()
SELECT meetcache.key('meeting', 'm1'), meetcache.key('live_meetings'),
       meetcache.key('user_meeting_count', 'u1'), meetcache.key('recent_chats', 'm1');
SELECT meetcache.key('nosuch', 'x');
SELECT meetcache.key('meeting');
SELECT meetcache.key('meeting', 'a', 'b');
SELECT meetcache.key('meeting', NULL);
SELECT meetcache.key(NULL, 'x');

-- delete, by name and by pattern (SCAN, with a prefix-safe pattern)
SELECT meetcache.cache_set('meeting:12', '1', 60), meetcache.cache_set('meeting:123', '1', 60),
       meetcache.cache_set('meeting:12:participants', '1', 60);
SELECT meetcache.cache_del('meeting:12', 'k:missing');
SELECT meetcache.cache_exists('meeting:123') AS other_kept;
SELECT meetcache.cache_del_pattern('meeting:12*');
SELECT key FROM meetcache.cache_keys('meeting:*') ORDER BY key;
SELECT key, type, ttl > 0 AS has_ttl, size_bytes > 0 AS has_size FROM meetcache.cache_keys('k:*');
SELECT count(*) FROM meetcache.cache_keys('*', 2);

-- bad input: every one a clear error
SELECT meetcache.cache_get(NULL);
SELECT meetcache.cache_get('');
SELECT meetcache.cache_get(repeat('x', 2000));
SELECT meetcache.cache_set('k', '1', 0);
SELECT meetcache.cache_set('k', '1', -5);
SELECT meetcache.cache_set('k', NULL, 10);
SELECT meetcache.cache_del(NULL::text);
SELECT meetcache.cache_del('a', '');
SELECT meetcache.cache_del_pattern('');
SELECT meetcache.cache_keys('*', 0);
\! redis-cli -p $REDIS_PORT SET bad:json 'not json {' > /dev/null
SELECT meetcache.cache_get('bad:json');
\! redis-cli -p $REDIS_PORT RPUSH bad:list a > /dev/null
SELECT meetcache.cache_get('bad:list');

-- configuration: a malformed URL is never echoed; a password is refused
SET meetcache.redis_url = 'http://127.0.0.1:6379';
SET meetcache.redis_url = 'redis://app@127.0.0.1:99999/0';
SET meetcache.redis_url = 'redis://app@127.0.0.1:6379/x';
SET meetcache.redis_url = 'redis://:s3cret@/0';
SET meetcache.redis_delivery = 'sync';
SET meetcache.delivery = 'async';
SET meetcache.commit_timeout = 0;
SHOW meetcache.delivery;
SHOW meetcache.max_keys;

-- an unreachable Redis: a clear error, no hang
SET meetcache.redis_url = 'redis://127.0.0.1:1/0';
SELECT meetcache.cache_get('k:1');
SELECT meetcache.cache_ping();
-- a wrong password: refused, and the password is not in the message
SELECT 'redis://nosuchuser@127.0.0.1:' || :'redis_port' || '/0' AS url \gset
SET meetcache.redis_url = :'url';
DO $$
DECLARE msg text; det text;
BEGIN
  PERFORM meetcache.cache_get('k:1');
EXCEPTION WHEN invalid_password THEN
  GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
  RAISE NOTICE 'refused with %: % / %', SQLSTATE, regexp_replace(msg, ':\d+', ':PORT'), det;
  RAISE NOTICE 'password in message: %', (msg || det) LIKE '%wrongpw%';
END $$;
RESET meetcache.redis_url;
SELECT meetcache.cache_exists('k:1') AS reconnected;

-- SELECT db from the URL is honoured
SELECT 'redis://127.0.0.1:' || :'redis_port' || '/3' AS url3 \gset
SET meetcache.redis_url = :'url3';
SELECT meetcache.cache_set('in:db3', '"three"', 60);
RESET meetcache.redis_url;
SELECT meetcache.cache_exists('in:db3') AS visible_in_db0;
\! redis-cli -p $REDIS_PORT -n 3 GET in:db3
\! redis-cli -p $REDIS_PORT -n 3 DEL in:db3 > /dev/null

-- key_prefix namespaces every key; SQL sees keys without it
SET meetcache.key_prefix = 'tenant1:';
SELECT meetcache.cache_set('meeting:m1', '1', 60);
SELECT key FROM meetcache.cache_keys('meeting:*');
\! redis-cli -p $REDIS_PORT EXISTS tenant1:meeting:m1
SELECT meetcache.cache_del_pattern('*');
RESET meetcache.key_prefix;
SELECT meetcache.cache_exists('k:1') AS unprefixed_untouched;

-- privileges: cache data is not for PUBLIC; the URL is superuser-only
CREATE ROLE mc_app LOGIN;
SET ROLE mc_app;
SELECT meetcache.cache_get('k:1');
SELECT meetcache.cache_del('k:1');
SHOW meetcache.redis_url;
SELECT setting FROM pg_settings WHERE name = 'meetcache.redis_url';
SELECT meetcache.key('meeting', 'm1');
SELECT * FROM meetcache.affected_keys('pg_class', NULL, '{}');
SET meetcache.key_prefix = 'evil:';
RESET ROLE;
GRANT EXECUTE ON FUNCTION meetcache.cache_get(text) TO mc_app;
SET ROLE mc_app;
SELECT meetcache.cache_get('k:1') IS NOT NULL AS granted;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION meetcache.cache_get(text) FROM mc_app;
DROP ROLE mc_app;

-- \df lists the functions
SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'meetcache' AND p.proname NOT LIKE '\_%' ORDER BY 1;

SELECT meetcache.cache_del_pattern('*') >= 0 AS cleaned;
