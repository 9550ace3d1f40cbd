-- The lesson commands' queries: catalog look-ups, the model cache, generation leases.

-- name: subject_id
SELECT id FROM subjects WHERE code = %(code)s;

-- name: canonical_topic_id
SELECT id FROM topics
WHERE subject_id = %(subject_id)s AND canonical AND lower(name) = lower(%(name)s)
ORDER BY id
LIMIT 1;

-- name: cache_get
-- A live row counts as a hit: one statement reads it and bumps its counters.
UPDATE cache
SET hits = hits + 1, last_hit_at = now()
WHERE key = %(key)s AND (ttl_at IS NULL OR ttl_at > now())
RETURNING model, payload_json;

-- name: cache_put
INSERT INTO cache (key, model, payload_json, ttl_at)
VALUES (%(key)s, %(model)s, %(payload)s::jsonb, now() + make_interval(days => %(days)s))
ON CONFLICT (key) DO UPDATE
SET model = EXCLUDED.model, payload_json = EXCLUDED.payload_json, ttl_at = EXCLUDED.ttl_at;

-- name: lease_request
-- Ask for generation of a batch of lessons: a new row is free at once; a failed one is
-- re-armed. A lesson that is done or abandoned stays so. When every row is already there
-- and none failed (a stream reopened: the common case) it writes nothing, so it locks no
-- row and has no commit to flush; rows are locked and inserted in lesson_id order, so two
-- batches do not deadlock. Returns the lessons a supervisor could claim now.
WITH wanted AS (
  SELECT DISTINCT unnest(%(lesson_ids)s::text[]) AS lesson_id
), failed AS (
  SELECT g.lesson_id FROM lesson_generation AS g JOIN wanted USING (lesson_id)
  WHERE g.state = 'failed'
  ORDER BY g.lesson_id
  FOR UPDATE OF g
), rearmed AS (
  UPDATE lesson_generation AS g
  SET state = 'pending', owner = NULL, expires_at = now(), updated_at = now()
  FROM failed
  WHERE g.lesson_id = failed.lesson_id AND g.state = 'failed'
  RETURNING g.lesson_id
), added AS (
  INSERT INTO lesson_generation (lesson_id)
  SELECT wanted.lesson_id FROM wanted
  WHERE NOT EXISTS (SELECT 1 FROM lesson_generation AS g WHERE g.lesson_id = wanted.lesson_id)
  ORDER BY wanted.lesson_id
  ON CONFLICT (lesson_id) DO NOTHING
  RETURNING lesson_id
)
SELECT lesson_id FROM rearmed
UNION ALL
SELECT lesson_id FROM added
UNION ALL
SELECT g.lesson_id FROM lesson_generation AS g JOIN wanted USING (lesson_id)
WHERE g.state = 'pending' AND (g.owner IS NULL OR g.expires_at < now());

-- name: lease_claim
-- Take up to `limit` free or lapsed leases (a given lesson first, when named). SKIP LOCKED:
-- two supervisors claiming at once never wait for or take each other's rows.
WITH free AS (
  SELECT lesson_id FROM lesson_generation
  WHERE state = 'pending'
    AND (owner IS NULL OR expires_at < now())
    AND (%(lesson_id)s::text IS NULL OR lesson_id = %(lesson_id)s::text)
  ORDER BY expires_at
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE lesson_generation AS g
SET owner = %(owner)s,
    expires_at = now() + make_interval(secs => %(ttl_s)s),
    claims = g.claims + 1,
    updated_at = now()
FROM free
WHERE g.lesson_id = free.lesson_id
RETURNING g.lesson_id;

-- name: lease_renew
-- Renew every lease this worker holds in one statement; what comes back is still ours.
UPDATE lesson_generation
SET expires_at = now() + make_interval(secs => %(ttl_s)s), updated_at = now()
WHERE owner = %(owner)s AND state = 'pending' AND lesson_id = ANY(%(lesson_ids)s::text[])
RETURNING lesson_id;

-- name: lease_finish
-- The owner is done with a lesson: state done | failed | abandoned (or pending to hand it
-- over at once, e.g. on shutdown).
UPDATE lesson_generation
SET state = %(state)s, owner = NULL, expires_at = now(), updated_at = now()
WHERE lesson_id = %(lesson_id)s AND owner = %(owner)s;

-- name: lease_abandon
-- Anyone may stop a lesson's generation; its owner sees it at the next renewal.
UPDATE lesson_generation
SET state = 'abandoned', updated_at = now()
WHERE lesson_id = %(lesson_id)s;

-- name: lease_get
SELECT state, owner, expires_at > now(), claims FROM lesson_generation
WHERE lesson_id = %(lesson_id)s;
