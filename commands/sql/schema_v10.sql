-- Schema v10 · owned by commands/: what the command side keeps beside the log.

-- Sessions: the cookie carries a random token; only its sha256 is stored.
ALTER TABLE sessions
  ADD COLUMN token_hash   TEXT,
  ADD COLUMN last_seen_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  ADD COLUMN expires_at   TIMESTAMPTZ NOT NULL DEFAULT NOW() + INTERVAL '30 days';
CREATE UNIQUE INDEX idx_sessions_token_hash ON sessions (token_hash) WHERE token_hash IS NOT NULL;
CREATE INDEX idx_sessions_user ON sessions (user_id);
