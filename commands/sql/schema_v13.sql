-- Schema v13 · owned by commands/: accounts (docs/accounts.md) and erasure (docs/privacy.md).

-- An anonymous user whose work moved into an existing account (magic link) is merged:
-- soft-deleted at once, purged with the others. A purged user keeps a tombstone row (its id,
-- anon_id and dates; no email), which the log's events and other rows may still name.
ALTER TABLE users
  ADD COLUMN merged_into TEXT,
  ADD COLUMN purged_at   TIMESTAMPTZ;
CREATE INDEX idx_users_deleted ON users (deleted_at) WHERE deleted_at IS NOT NULL AND purged_at IS NULL;

-- magic_links.token holds the sha256 of the token (hex); the token itself is only in the mail.
CREATE INDEX idx_magic_links_user ON magic_links (user_id);

-- The idle sweep ends sessions quiet for 30 minutes.
CREATE INDEX idx_sessions_open_last_seen ON sessions (last_seen_at) WHERE ended_at IS NULL;

-- Who owns a lesson is read from the log: its lesson.created, then any lesson.transferred.
-- This finds a user's lessons without scanning every lesson's first event.
CREATE INDEX idx_events_lesson_owner
  ON events ((coalesce(payload_json->>'to_user_id', payload_json->>'user_id')))
  WHERE type IN ('lesson.created', 'lesson.transferred');
