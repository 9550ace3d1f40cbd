-- Rate buckets (contracts §8): one row per (scope, key, bucket) and time slice.

-- name: admit_hit
-- One hit against (scope, key, bucket), in one round trip: two statements sent as one
-- simple query, which Postgres runs as one transaction (ratelimit.hit sends it on an
-- autocommit connection through a client-side-binding cursor).
--
-- First, the bucket's advisory lock, held until that transaction ends: admission is
-- read-then-write, and the lock serialises it per bucket, so 30 concurrent requests
-- against a limit of 5 admit 5. The two-integer form keeps these locks apart from the
-- single-bigint keys used elsewhere.
--
-- Then, with a snapshot taken after the lock (each statement of a READ COMMITTED
-- transaction takes its own), so it holds every hit admitted before: the slices that still
-- overlap the window and the clock they were read at, as they were before this hit, and
-- this hit added to its slice if those slices hold fewer than `limit` hits, the rule
-- ratelimit.decide applies to the same rows.
SELECT pg_advisory_xact_lock(%(namespace)s::int, hashtext(%(lock_name)s));
WITH live AS (
  SELECT window_start, count
  FROM rate_buckets
  WHERE scope = %(scope)s AND key = %(key)s AND bucket = %(bucket)s
    AND window_start > statement_timestamp() - %(window)s::interval - %(slice)s::interval
), counted AS (
  INSERT INTO rate_buckets (scope, key, bucket, count, window_start)
  SELECT %(scope)s, %(key)s, %(bucket)s, 1,
         date_bin(%(slice)s::interval, statement_timestamp(), '1970-01-01 00:00:00+00')
  WHERE (SELECT coalesce(sum(count), 0) FROM live) < %(limit)s
  ON CONFLICT (scope, key, bucket, window_start) DO UPDATE SET count = rate_buckets.count + 1
)
SELECT statement_timestamp(),
       coalesce(array_agg(window_start ORDER BY window_start), '{}'),
       coalesce(array_agg(count ORDER BY window_start), '{}')
FROM live;

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
