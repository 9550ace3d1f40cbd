-- Rate buckets (contracts §8): one row per (scope, key, bucket) and time slice.

-- name: lock_bucket
-- Serialises admission per (scope, key, bucket) for the rest of the transaction, so the
-- count that follows cannot be stale: 30 concurrent requests against a limit of 5 admit 5.
-- The two-integer form keeps these locks apart from the single-bigint keys used elsewhere.
-- The transaction's commit does not wait for its disk flush (SET LOCAL synchronous_commit
-- off): a count lost in a crash lets a few requests more through, while a flush is a wait
-- on every request (several ms when the disk is busy). Others see the count at commit all
-- the same; the log's own appends stay durable (eventstore/database.py).
SELECT pg_advisory_xact_lock(%(namespace)s::int, hashtext(%(lock_name)s)),
       set_config('synchronous_commit', 'off', true);

-- name: count_hit_if_room
-- After lock_bucket, in the same transaction (this statement's snapshot, taken after the
-- lock, holds every hit admitted before): the slices that still overlap the window and the
-- clock they were read at, as they were before this hit, and this hit added to its slice
-- if those slices hold fewer than `limit` hits, the rule ratelimit.decide applies to the
-- same rows. One statement where the read and the count were two.
WITH live AS (
  SELECT window_start, count
  FROM rate_buckets
  WHERE scope = %(scope)s AND key = %(key)s AND bucket = %(bucket)s
    AND window_start > statement_timestamp() - %(window)s - %(slice)s
), counted AS (
  INSERT INTO rate_buckets (scope, key, bucket, count, window_start)
  SELECT %(scope)s, %(key)s, %(bucket)s, 1,
         date_bin(%(slice)s, statement_timestamp(), '1970-01-01 00:00:00+00')
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
