-- Browser analytics (commands/analytics.py).

-- name: owned
-- Of these lessons, the ones the user owns by the log (their last lesson.created or
-- lesson.transferred), read through the (lesson_id, lesson_seq) key.
SELECT o.lesson_id FROM (
  SELECT DISTINCT ON (lesson_id) lesson_id,
         coalesce(payload_json->>'to_user_id', payload_json->>'user_id') AS owner
  FROM events
  WHERE lesson_id = ANY(%(lesson_ids)s::text[]) AND lesson_seq IS NOT NULL
    AND type IN ('lesson.created', 'lesson.transferred')
  ORDER BY lesson_id, lesson_seq DESC
) AS o
WHERE o.owner = %(user_id)s;
