-- What the API reads from the projected tables. Every query leaves soft-deleted rows out
-- (contracts §2: every read filters deleted_at IS NULL).

-- name: lesson
SELECT id, session_id, user_id, subject, topic, subject_id, topic_id, status, level_at_start,
       intent_json, plan_json, locked_revision, total_beats, created_at, completed_at,
       updated_at
FROM lessons
WHERE id = %(lesson_id)s AND deleted_at IS NULL
  AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s::text);

-- name: lesson_beats
SELECT id, ord, kind, title, status, content_json, narration_text, audio_url, viz_url,
       error_code, created_at, updated_at
FROM beats
WHERE lesson_id = %(lesson_id)s AND deleted_at IS NULL
ORDER BY ord;

-- name: plan_revisions
SELECT r.revision_num, r.triggered_by, r.feedback_text, r.plan_json, r.created_at
FROM plan_revisions r JOIN lessons l ON l.id = r.lesson_id
WHERE r.lesson_id = %(lesson_id)s AND l.deleted_at IS NULL
ORDER BY r.revision_num;

-- name: list_lessons
-- "My library": newest first, keyset-paginated on (created_at, id).
SELECT id, subject, topic, status, level_at_start,
       coalesce(total_beats, jsonb_array_length(plan_json->'beats')) AS total_beats,
       (SELECT count(*) FROM beats AS b
        WHERE b.lesson_id = lessons.id AND b.status = 'ready' AND b.deleted_at IS NULL
       )::int AS beats_completed,
       created_at, completed_at, updated_at
FROM lessons
WHERE user_id = %(user_id)s AND deleted_at IS NULL
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::text))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;
