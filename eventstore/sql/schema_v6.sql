-- Schema v6 · the event store's vault of personal data (docs/privacy.md).
--
-- The log is append-only, so personal data (what a student typed, and model output made
-- from it) is not written into events.payload_json: the event keeps its other fields and
-- the personal ones live here, one row per event, keyed by the event's id. Reads merge the
-- two (eventstore/personal.py). Erasing a user deletes their rows here: the events stay,
-- with every position and lesson_seq, and their personal fields read as erased.
--
-- lesson_id: the row belongs to that lesson's owner (whoever owns it by the log when the
--   purge runs, after any lesson.transferred).
-- user_id: the row of a session-level event (browser analytics) belongs to that user.
-- No foreign key to events: the row is written just before its event, by the same append.
CREATE TABLE personal_data (
  event_id   TEXT PRIMARY KEY,
  lesson_id  TEXT,
  user_id    TEXT,
  fields     JSONB NOT NULL CHECK (jsonb_typeof(fields) = 'object'),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_personal_data_lesson ON personal_data (lesson_id) WHERE lesson_id IS NOT NULL;
CREATE INDEX idx_personal_data_user ON personal_data (user_id) WHERE user_id IS NOT NULL;
