-- The lessons projection: lessons, plan_revisions, beats, interactions. `{lessons}` etc. are
-- table names bound by projections.core.Tables (live tables, or a rebuild's shadows).
-- JSON columns travel as text: rows loaded for a page are written back without re-encoding.

-- name: load_lessons
SELECT id, session_id, user_id, subject, topic, status, level_at_start, intent_json::text,
       plan_json::text, created_at, completed_at, deleted_at, subject_id, topic_id,
       locked_revision, total_beats, updated_at
FROM {lessons}
WHERE id = ANY(%(ids)s::text[]);

-- name: load_beats
SELECT id, lesson_id, ord, kind, content_json::text, narration_text, audio_url, viz_url,
       status, created_at, deleted_at, title, model, error_code, error_message, updated_at
FROM {beats}
WHERE lesson_id = ANY(%(ids)s::text[]);

-- name: upsert_lessons
INSERT INTO {lessons} (id, session_id, user_id, subject, topic, status, level_at_start,
                       intent_json, plan_json, created_at, completed_at, deleted_at,
                       subject_id, topic_id, locked_revision, total_beats, updated_at)
SELECT id, session_id, user_id, subject, topic, status, level_at_start, intent_json::jsonb,
       plan_json::jsonb, created_at, completed_at, deleted_at, subject_id, topic_id,
       locked_revision, total_beats, updated_at
FROM unnest(%(id)s::text[], %(session_id)s::text[], %(user_id)s::text[], %(subject)s::text[],
            %(topic)s::text[], %(status)s::text[], %(level_at_start)s::text[],
            %(intent_json)s::text[], %(plan_json)s::text[], %(created_at)s::timestamptz[],
            %(completed_at)s::timestamptz[], %(deleted_at)s::timestamptz[],
            %(subject_id)s::text[], %(topic_id)s::text[], %(locked_revision)s::int[],
            %(total_beats)s::int[], %(updated_at)s::timestamptz[])
     AS u(id, session_id, user_id, subject, topic, status, level_at_start, intent_json,
          plan_json, created_at, completed_at, deleted_at, subject_id, topic_id,
          locked_revision, total_beats, updated_at)
ON CONFLICT (id) DO UPDATE SET
  user_id = EXCLUDED.user_id, status = EXCLUDED.status, plan_json = EXCLUDED.plan_json,
  completed_at = EXCLUDED.completed_at, deleted_at = EXCLUDED.deleted_at,
  locked_revision = EXCLUDED.locked_revision, total_beats = EXCLUDED.total_beats,
  updated_at = EXCLUDED.updated_at;

-- name: upsert_beats
INSERT INTO {beats} (id, lesson_id, ord, kind, content_json, narration_text, audio_url,
                     viz_url, status, created_at, deleted_at, title, model, error_code,
                     error_message, updated_at)
SELECT id, lesson_id, ord, kind, content_json::jsonb, narration_text, audio_url, viz_url,
       status, created_at, deleted_at, title, model, error_code, error_message, updated_at
FROM unnest(%(id)s::text[], %(lesson_id)s::text[], %(ord)s::int[], %(kind)s::text[],
            %(content_json)s::text[], %(narration_text)s::text[], %(audio_url)s::text[],
            %(viz_url)s::text[], %(status)s::text[], %(created_at)s::timestamptz[],
            %(deleted_at)s::timestamptz[], %(title)s::text[], %(model)s::text[],
            %(error_code)s::text[], %(error_message)s::text[], %(updated_at)s::timestamptz[])
     AS u(id, lesson_id, ord, kind, content_json, narration_text, audio_url, viz_url, status,
          created_at, deleted_at, title, model, error_code, error_message, updated_at)
ON CONFLICT (id) DO UPDATE SET
  kind = EXCLUDED.kind, content_json = EXCLUDED.content_json,
  narration_text = EXCLUDED.narration_text, audio_url = EXCLUDED.audio_url,
  viz_url = EXCLUDED.viz_url, status = EXCLUDED.status, deleted_at = EXCLUDED.deleted_at,
  title = EXCLUDED.title, model = EXCLUDED.model, error_code = EXCLUDED.error_code,
  error_message = EXCLUDED.error_message, updated_at = EXCLUDED.updated_at;

-- name: insert_plan_revisions
INSERT INTO {plan_revisions} (id, lesson_id, revision_num, plan_json, triggered_by,
                              feedback_text, created_at)
SELECT id, lesson_id, revision_num, plan_json::jsonb, triggered_by, feedback_text, created_at
FROM unnest(%(id)s::text[], %(lesson_id)s::text[], %(revision_num)s::int[],
            %(plan_json)s::text[], %(triggered_by)s::text[], %(feedback_text)s::text[],
            %(created_at)s::timestamptz[])
     AS u(id, lesson_id, revision_num, plan_json, triggered_by, feedback_text, created_at);

-- name: insert_interactions
INSERT INTO {interactions} (id, lesson_id, beat_id, type, payload_json, response_json, ts,
                            deleted_at)
SELECT id, lesson_id, beat_id, type, payload_json::jsonb, response_json::jsonb, ts, deleted_at
FROM unnest(%(id)s::text[], %(lesson_id)s::text[], %(beat_id)s::text[], %(type)s::text[],
            %(payload_json)s::text[], %(response_json)s::text[], %(ts)s::timestamptz[],
            %(deleted_at)s::timestamptz[])
     AS u(id, lesson_id, beat_id, type, payload_json, response_json, ts, deleted_at);

-- name: soft_delete_interactions
-- A deleted lesson hides its interactions too (contracts §6: the cascade is app-side).
UPDATE {interactions} AS i
SET deleted_at = d.deleted_at
FROM unnest(%(lesson_id)s::text[], %(deleted_at)s::timestamptz[]) AS d(lesson_id, deleted_at)
WHERE i.lesson_id = d.lesson_id AND i.deleted_at IS NULL;

-- name: erase_interactions
-- lesson.erased: the lesson's rows go (docs/privacy.md), children first.
DELETE FROM {interactions} WHERE lesson_id = ANY(%(ids)s::text[]);

-- name: erase_plan_revisions
DELETE FROM {plan_revisions} WHERE lesson_id = ANY(%(ids)s::text[]);

-- name: erase_beats
DELETE FROM {beats} WHERE lesson_id = ANY(%(ids)s::text[]);

-- name: erase_lessons
DELETE FROM {lessons} WHERE id = ANY(%(ids)s::text[]);
