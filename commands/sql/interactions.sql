-- The interaction commands' queries: where the student is, and explicit cache invalidation.

-- name: advanced_to
-- The beat the student last moved to: their latest `beat.advance` client event (session
-- level, no lesson_seq) naming this lesson, sent by the lesson's owner. Newest first down
-- idx_events_beat_advance (schema_v16.sql); a client event names its lesson in the row's
-- lesson_id (commands/analytics.py), never in its payload.
SELECT (payload_json->>'to_ord')::int
FROM events
WHERE type = 'beat.advance'
  AND lesson_seq IS NULL
  AND lesson_id = %(lesson_id)s
  AND (session_id = %(session_id)s OR metadata_json->>'user_id' = %(user_id)s)
  AND jsonb_typeof(payload_json->'to_ord') = 'number'
ORDER BY insert_no DESC
LIMIT 1;

-- name: cache_delete
-- Contracts §5: a beat whose regeneration was asked for loses its cached content.
DELETE FROM cache WHERE key = %(key)s;
