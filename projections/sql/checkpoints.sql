-- Projection checkpoints: the last log position each projection applied, and its state.

-- name: ensure_checkpoints
INSERT INTO projection_checkpoints (name)
SELECT unnest(%(names)s::text[])
ON CONFLICT (name) DO NOTHING;

-- name: lock_checkpoint
-- Taken at the start of every apply transaction: whoever holds the row applies the next
-- page, and re-reads the position it must start from, so no event is applied twice even by
-- two processes that both believe they own the projection.
SELECT position, state, failed_position, error FROM projection_checkpoints
WHERE name = %(name)s
FOR UPDATE;

-- name: advance_checkpoint
UPDATE projection_checkpoints
SET position = %(position)s, state = 'running', error = NULL, failed_position = NULL,
    updated_at = clock_timestamp()
WHERE name = %(name)s;

-- name: record_failure
UPDATE projection_checkpoints
SET state = 'failed', error = %(error)s, failed_position = %(position)s,
    updated_at = clock_timestamp()
WHERE name = %(name)s AND position < %(position)s AND state <> 'stopped';

-- name: skipped_positions
SELECT position FROM projection_skips
WHERE name = %(name)s AND position > %(after)s AND position <= %(upto)s;

-- name: record_skip
INSERT INTO projection_skips (name, position, error) VALUES (%(name)s, %(position)s, %(error)s)
ON CONFLICT (name, position) DO NOTHING;

-- name: set_state
UPDATE projection_checkpoints
SET state = %(state)s, updated_at = clock_timestamp()
WHERE name = %(name)s
RETURNING position;

-- name: positions
SELECT name, position, state FROM projection_checkpoints WHERE name = ANY(%(names)s::text[]);

-- name: status
-- Each projection's checkpoint, its lag behind the head of the log (in events, and in
-- seconds: the age of the oldest event it has not applied), and which backend holds its
-- runner lock, if any.
WITH head AS (SELECT coalesce(max(position), 0) AS head FROM events)
SELECT c.name, c.position, head.head, c.state, c.error, c.failed_position, c.updated_at,
       head.head - c.position AS lag_events,
       coalesce(extract(epoch FROM clock_timestamp() - (
         SELECT e.ts FROM events e WHERE e.position = c.position + 1)), 0)::float8 AS lag_s,
       (SELECT l.pid FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((l.classid::bigint << 32) | l.objid::bigint)
              = hashtextextended('omnitutor.projection.' || c.name, 0)) AS owner_pid,
       r.position AS rebuild_position
FROM projection_checkpoints c CROSS JOIN head
LEFT JOIN projection_rebuilds r ON r.name = c.name
ORDER BY c.name;

-- name: try_lock
SELECT pg_try_advisory_lock(hashtextextended(%(key)s, 0));

-- name: unlock
SELECT pg_advisory_unlock(hashtextextended(%(key)s, 0));

-- name: ping
SELECT 1;
