-- Schema v15 · owned by commands/: asset objects the purge has still to delete (docs/privacy.md).
--
-- The purge deletes an erased user's asset rows in its transaction and queues their object
-- keys here in the same commit; it then deletes each object and its queue row. A run that
-- stops between the two leaves the key here, and the next run deletes the object first.
-- The keys cannot be found again from the log: the requests and answers they were made
-- from are personal and gone with the vault rows.
CREATE TABLE asset_deletions (
  key          TEXT PRIMARY KEY,          -- the store's object key, <folder>/<sha256>.<ext>
  content_hash TEXT NOT NULL,             -- assets.content_hash of the deleted row
  queued_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The purge's question "does another lesson still use this clip?" (assets.sql
-- assets_used_elsewhere), answered by index probes instead of a pass over the log and the
-- vault for every purged user. A clip's key is audio/<64 hex>.mp3: the last 74 characters
-- of any URL that names it. Narration texts are indexed by md5 (a text can be longer than
-- a btree entry may be). One entry per narrated beat (two events), spoken answer and video.
CREATE INDEX idx_events_clip ON events ((right(payload_json->>'audio_url', 74)))
  WHERE type IN ('beat.completed', 'audio.ready') AND payload_json->>'audio_url' IS NOT NULL;
CREATE INDEX idx_personal_data_narration
  ON personal_data ((md5(coalesce(fields->>'narration_text', fields->'response'->>'narration_text'))))
  WHERE coalesce(fields->>'narration_text', fields->'response'->>'narration_text') IS NOT NULL;
CREATE INDEX idx_personal_data_clips ON personal_data USING gin ((fields->'response'->'clips'))
  WHERE fields->'response' ? 'clips';
-- An erased lesson no longer counts as a user of anything.
CREATE INDEX idx_events_erased ON events (lesson_id) WHERE type = 'lesson.erased';
