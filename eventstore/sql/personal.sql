-- The vault of personal data (schema_v5.sql, eventstore/personal.py).

-- name: keep
-- A retried append writes the same rows again: the first one stays.
INSERT INTO personal_data (event_id, lesson_id, user_id, fields)
SELECT v.event_id, v.lesson_id, v.user_id, v.fields::jsonb
FROM unnest(%(event_ids)s::text[], %(lesson_ids)s::text[], %(user_ids)s::text[],
            %(fields)s::text[]) AS v(event_id, lesson_id, user_id, fields)
ON CONFLICT (event_id) DO NOTHING;

-- name: forget
-- Erase: the personal rows of these lessons and of this user's session-level events.
DELETE FROM personal_data
WHERE lesson_id = ANY(%(lesson_ids)s::text[]) OR user_id = %(user_id)s;

-- name: rekey
-- An anonymous user's browser events now belong to the account they were merged into.
UPDATE personal_data SET user_id = %(to_user_id)s
WHERE user_id = %(from_user_id)s AND lesson_id IS NULL;
