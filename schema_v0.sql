-- omnitutor schema · v0 · M1 minimum (contracts §2, complete).
--
-- pgcrypto is created where the server offers it (the contract asks for it); nothing in the
-- schema depends on it: ids are ULIDs made by the app and sha256() is built into Postgres 11+.
-- The embedded PostgreSQL 16 ships without contrib, so the extension is optional here.
DO $$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto') THEN
    CREATE EXTENSION IF NOT EXISTS "pgcrypto";
  END IF;
END
$$;

CREATE TABLE users (
  id            TEXT PRIMARY KEY,           -- ULID
  anon_id       TEXT UNIQUE NOT NULL,
  email         TEXT UNIQUE,
  settings_json JSONB NOT NULL DEFAULT '{}',
  created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at    TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE sessions (
  id          TEXT PRIMARY KEY,
  user_id     TEXT NOT NULL REFERENCES users(id),
  started_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  ended_at    TIMESTAMPTZ,
  client_meta_json JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE lessons (
  id              TEXT PRIMARY KEY,
  session_id      TEXT NOT NULL REFERENCES sessions(id),
  user_id         TEXT NOT NULL REFERENCES users(id),
  subject         TEXT NOT NULL,           -- physics, math, history, english, ...
  topic           TEXT NOT NULL,
  status          TEXT NOT NULL DEFAULT 'draft',  -- draft|active|complete|abandoned
  level_at_start  TEXT NOT NULL,           -- pop|hs|ug|grad
  intent_json     JSONB NOT NULL,          -- output of setup modal
  plan_json       JSONB,                   -- output of plan modal lock
  created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  completed_at    TIMESTAMPTZ
);
CREATE INDEX idx_lessons_session ON lessons(session_id);

CREATE TABLE beats (
  id              TEXT PRIMARY KEY,
  lesson_id       TEXT NOT NULL REFERENCES lessons(id) ON DELETE CASCADE,
  ord             INT NOT NULL,
  kind            TEXT NOT NULL,            -- concept|derivation|problem|test|free
  content_json    JSONB NOT NULL,
  narration_text  TEXT,
  audio_url       TEXT,
  viz_url         TEXT,
  status          TEXT NOT NULL DEFAULT 'pending', -- pending|streaming|ready|failed
  created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  UNIQUE (lesson_id, ord)
);

CREATE TABLE interactions (
  id          TEXT PRIMARY KEY,
  lesson_id   TEXT NOT NULL REFERENCES lessons(id) ON DELETE CASCADE,
  beat_id     TEXT REFERENCES beats(id) ON DELETE SET NULL,
  type        TEXT NOT NULL,           -- ask, hint, attempt, adjust, visualize, animate, advance, ...
  payload_json JSONB NOT NULL,
  response_json JSONB,
  ts          TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE cache (
  key         TEXT PRIMARY KEY,         -- sha256(model + intent_signature + ...)
  model       TEXT NOT NULL,
  payload_json JSONB NOT NULL,
  hits        INT NOT NULL DEFAULT 0,
  last_hit_at TIMESTAMPTZ,
  ttl_at      TIMESTAMPTZ,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_cache_model_ttl ON cache(model, ttl_at);

CREATE TABLE assets (
  id          TEXT PRIMARY KEY,
  lesson_id   TEXT REFERENCES lessons(id) ON DELETE CASCADE,
  beat_id     TEXT REFERENCES beats(id) ON DELETE CASCADE,
  type        TEXT NOT NULL,           -- audio|diagram|flashcards|notes|slides|video
  url         TEXT NOT NULL,
  mime        TEXT NOT NULL,
  size_bytes  BIGINT,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE events (
  id          TEXT PRIMARY KEY,
  session_id  TEXT REFERENCES sessions(id) ON DELETE CASCADE,
  lesson_id   TEXT REFERENCES lessons(id) ON DELETE SET NULL,
  type        TEXT NOT NULL,
  payload_json JSONB NOT NULL DEFAULT '{}',
  ts          TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_events_session_ts ON events(session_id, ts);

CREATE TABLE model_runs (
  id            TEXT PRIMARY KEY,
  trace_id      TEXT NOT NULL,
  lesson_id     TEXT REFERENCES lessons(id) ON DELETE SET NULL,
  beat_id       TEXT REFERENCES beats(id) ON DELETE SET NULL,
  model         TEXT NOT NULL,        -- haiku-4-5 | sonnet-4-6 | opus-4-7 | elevenlabs
  purpose       TEXT NOT NULL,        -- plan | beat | ask | adjust | tts | viz | makeme
  prompt_tokens INT,
  completion_tokens INT,
  cost_usd      NUMERIC(10,5),
  latency_ms    INT,
  status        TEXT NOT NULL,        -- ok | rate_limited | refused | error | timeout
  error_code    TEXT,
  ts            TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_model_runs_ts ON model_runs(ts);
CREATE INDEX idx_model_runs_trace ON model_runs(trace_id);

CREATE TABLE magic_links (
  token       TEXT PRIMARY KEY,         -- random 32-byte hex
  user_id     TEXT NOT NULL REFERENCES users(id),
  email       TEXT NOT NULL,
  consumed_at TIMESTAMPTZ,
  expires_at  TIMESTAMPTZ NOT NULL,    -- 15 min from issue
  created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE TABLE rate_buckets (
  scope        TEXT NOT NULL,         -- ip | user | api_key
  key          TEXT NOT NULL,
  bucket       TEXT NOT NULL,         -- plan | ask | viz | global
  count        INT NOT NULL DEFAULT 0,
  window_start TIMESTAMPTZ NOT NULL,
  PRIMARY KEY (scope, key, bucket, window_start)
);
