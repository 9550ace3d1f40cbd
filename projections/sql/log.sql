-- Reading the log in global order (the events table belongs to eventstore/; its columns in
-- StoredEvent field order).

-- name: head_position
SELECT coalesce(max(position), 0) FROM events;

-- name: read_page
SELECT id, position, lesson_id, lesson_seq, session_id, type, type_version, payload_json,
       metadata_json, ts
FROM events
WHERE position > %(after)s AND position <= %(upto)s AND type = ANY(%(types)s::text[])
ORDER BY position
LIMIT %(limit)s;
