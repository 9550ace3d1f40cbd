-- Idempotency keys (contracts §3): claimed before the work, completed or released after.
-- `key` is the namespaced "<user_id>:<client key>" (commands/idempotency.py).

-- name: claim
-- Take the key, or take over a row nobody may keep: an expired one (any state), or an
-- in-flight claim of the same request whose lease ran out (its process died). The INSERT …
-- ON CONFLICT is atomic: of any number of concurrent claimers exactly one gets the row.
INSERT INTO idempotency_keys AS k
  (key, user_id, request_hash, state, claim_token, lease_until, created_at, expires_at)
VALUES (%(key)s, %(user_id)s, %(request_hash)s, 'in_flight', %(token)s,
        now() + %(lease)s, now(), now() + %(ttl)s)
ON CONFLICT (key) DO UPDATE
SET request_hash  = EXCLUDED.request_hash,
    user_id       = EXCLUDED.user_id,
    state         = 'in_flight',
    claim_token   = EXCLUDED.claim_token,
    lease_until   = EXCLUDED.lease_until,
    created_at    = EXCLUDED.created_at,
    expires_at    = EXCLUDED.expires_at,
    status_code   = NULL,
    response_json = NULL,
    response_body = NULL,
    media_type    = NULL
WHERE k.expires_at <= now()
   OR (k.state = 'in_flight' AND k.lease_until <= now()
       AND k.request_hash = EXCLUDED.request_hash)
RETURNING k.claim_token;

-- name: lookup
-- What holds the key now; lease_left_ms only means something for an in-flight row.
SELECT request_hash, state, status_code, response_body, media_type,
       greatest(0, ceil(extract(epoch FROM (lease_until - now())) * 1000))::bigint
FROM idempotency_keys
WHERE key = %(key)s AND expires_at > now();

-- name: complete
UPDATE idempotency_keys
SET state = 'done', status_code = %(status_code)s, response_json = %(response_json)s::jsonb,
    response_body = %(response_body)s, media_type = %(media_type)s,
    claim_token = NULL, lease_until = NULL
WHERE key = %(key)s AND claim_token = %(token)s AND state = 'in_flight'
RETURNING 1;

-- name: renew
-- The owner is alive: push the lease on. Nothing once the claim is done, released or lost.
UPDATE idempotency_keys
SET lease_until = now() + %(lease)s
WHERE key = %(key)s AND claim_token = %(token)s AND state = 'in_flight'
RETURNING 1;

-- name: release
DELETE FROM idempotency_keys
WHERE key = %(key)s AND claim_token = %(token)s AND state = 'in_flight'
RETURNING 1;

-- name: purge_expired
-- A batch at a time, so a large purge never holds many row locks for long.
WITH doomed AS (
  SELECT key FROM idempotency_keys
  WHERE expires_at <= now()
  ORDER BY expires_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
DELETE FROM idempotency_keys AS k USING doomed WHERE k.key = doomed.key;
