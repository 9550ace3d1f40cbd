-- The cache table's upkeep and the plan pre-warm (commands/cache_upkeep.py).

-- name: note_plan_request
INSERT INTO plan_requests (key, model, request_json, asks, last_asked_at)
VALUES (%(key)s, %(model)s, %(request)s::jsonb, 1, now())
ON CONFLICT (key) DO UPDATE
SET asks = plan_requests.asks + 1, last_asked_at = now(), request_json = EXCLUDED.request_json;

-- name: prewarm_candidates
-- The most-asked keys of this model; `fresh` says whether the cached plan outlives tomorrow.
SELECT r.key, r.request_json, r.asks,
       (c.key IS NOT NULL AND (c.ttl_at IS NULL OR c.ttl_at > now() + interval '1 day')) AS fresh
FROM plan_requests r
LEFT JOIN cache c ON c.key = r.key
WHERE r.model = %(model)s
ORDER BY r.asks DESC, r.key
LIMIT %(top)s;

-- name: purge_expired
DELETE FROM cache
WHERE key IN (SELECT key FROM cache WHERE ttl_at <= now() LIMIT %(batch)s);

-- name: flush_batch
DELETE FROM cache WHERE key IN (SELECT key FROM cache LIMIT %(batch)s);
