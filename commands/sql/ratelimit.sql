-- Rate buckets (contracts §8): one row per (scope, key, bucket) and time slice.

-- name: lock_bucket
-- Serialises admission per (scope, key, bucket) for the rest of the transaction, so the
-- count read next cannot be stale: 30 concurrent requests against a limit of 5 admit 5.
-- The two-integer form keeps these locks apart from the single-bigint keys used elsewhere.
SELECT pg_advisory_xact_lock(%(namespace)s::int, hashtext(%(lock_name)s));

-- name: read_slices
-- The slices that still overlap the window, and the clock they were read at.
SELECT statement_timestamp(),
       coalesce(array_agg(window_start ORDER BY window_start), '{}'),
       coalesce(array_agg(count ORDER BY window_start), '{}')
FROM rate_buckets
WHERE scope = %(scope)s AND key = %(key)s AND bucket = %(bucket)s
  AND window_start > statement_timestamp() - %(window)s - %(slice)s;

-- name: count_hit
INSERT INTO rate_buckets (scope, key, bucket, count, window_start)
VALUES (%(scope)s, %(key)s, %(bucket)s, 1, %(window_start)s)
ON CONFLICT (scope, key, bucket, window_start) DO UPDATE SET count = rate_buckets.count + 1;

-- name: purge_old
WITH doomed AS (
  SELECT scope, key, bucket, window_start FROM rate_buckets
  WHERE window_start < now() - %(keep)s
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
DELETE FROM rate_buckets AS b USING doomed
WHERE (b.scope, b.key, b.bucket, b.window_start)
    = (doomed.scope, doomed.key, doomed.bucket, doomed.window_start);
