-- omnitutor schema · v2 · extensibility additions (contracts §2, complete).

-- v2 · ALTER existing tables for soft-delete + multi-tenancy + asset dedup
ALTER TABLE users
  ADD COLUMN org_id     TEXT,                  -- nullable · M3 classroom seam
  ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE sessions     ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE lessons      ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE beats        ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE interactions ADD COLUMN deleted_at TIMESTAMPTZ;
ALTER TABLE assets       ADD COLUMN content_hash TEXT,
                              ADD COLUMN deleted_at   TIMESTAMPTZ;

-- TTS dedup · same narration_text + voice_id never stored twice
CREATE UNIQUE INDEX idx_assets_content_hash
  ON assets(content_hash) WHERE content_hash IS NOT NULL;

-- Subjects · canonical (physics, math, history, english, ...)
CREATE TABLE subjects (
  id          TEXT PRIMARY KEY,
  code        TEXT UNIQUE NOT NULL,    -- physics | math | history | english
  name        TEXT NOT NULL,
  archetype   TEXT NOT NULL,           -- science | humanities | language | skill | curiosity
  created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Topics · canonical lessons land here, free-form get canonical=false
CREATE TABLE topics (
  id          TEXT PRIMARY KEY,
  subject_id  TEXT NOT NULL REFERENCES subjects(id),
  name        TEXT NOT NULL,
  canonical   BOOLEAN NOT NULL DEFAULT FALSE,
  created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_topics_subject ON topics(subject_id);

-- Lessons now FK to subjects + topics (keep free-form fallback)
ALTER TABLE lessons
  ADD COLUMN subject_id TEXT REFERENCES subjects(id),
  ADD COLUMN topic_id   TEXT REFERENCES topics(id);
  -- existing 'subject' / 'topic' text columns retained as fallback display

-- Plan revisions · history of every plan version (initial, iterate, adjust)
CREATE TABLE plan_revisions (
  id              TEXT PRIMARY KEY,
  lesson_id       TEXT NOT NULL REFERENCES lessons(id) ON DELETE CASCADE,
  revision_num    INT NOT NULL,
  plan_json       JSONB NOT NULL,
  triggered_by    TEXT NOT NULL,           -- initial | iterate | adjust
  feedback_text   TEXT,                       -- chip clicked or free-text
  created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  UNIQUE (lesson_id, revision_num)
);

-- Idempotency · prevents double-bill on retry / SSE reconnect
CREATE TABLE idempotency_keys (
  key           TEXT PRIMARY KEY,         -- client-supplied via Idempotency-Key header
  request_hash  TEXT NOT NULL,           -- sha256 of request body · catches mismatch
  user_id       TEXT REFERENCES users(id),
  status_code   INT NOT NULL,
  response_json JSONB NOT NULL,
  created_at    TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  expires_at    TIMESTAMPTZ NOT NULL      -- 24h from creation · purged by cron
);
CREATE INDEX idx_idempotency_expires ON idempotency_keys(expires_at);

-- M2 STUBS · created empty · populated in M2 ─────────────────────────────

CREATE TABLE subscriptions (
  id                     TEXT PRIMARY KEY,
  user_id                TEXT NOT NULL REFERENCES users(id),
  plan_code              TEXT NOT NULL,    -- free | starter | pro | classroom
  status                 TEXT NOT NULL,    -- trialing | active | past_due | canceled
  stripe_customer_id     TEXT,
  stripe_subscription_id TEXT,
  current_period_start   TIMESTAMPTZ,
  current_period_end     TIMESTAMPTZ,
  created_at             TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at             TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_subscriptions_user ON subscriptions(user_id);

CREATE TABLE mastery_records (
  user_id      TEXT NOT NULL REFERENCES users(id),
  topic_id     TEXT NOT NULL REFERENCES topics(id),
  last_seen_at TIMESTAMPTZ,
  score        NUMERIC(4,3),                 -- 0.000–1.000
  attempts     INT NOT NULL DEFAULT 0,
  correct      INT NOT NULL DEFAULT 0,
  next_review_at TIMESTAMPTZ,                -- spaced-rep schedule
  updated_at   TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  PRIMARY KEY (user_id, topic_id)
);
CREATE INDEX idx_mastery_next_review ON mastery_records(user_id, next_review_at);

-- Canonical subjects · seeded (ids are fixed ULIDs so every database agrees).
INSERT INTO subjects (id, code, name, archetype) VALUES
  ('01JD00000000000000000SBJ01', 'physics',          'Physics',           'science'),
  ('01JD00000000000000000SBJ02', 'math',             'Mathematics',       'science'),
  ('01JD00000000000000000SBJ03', 'chemistry',        'Chemistry',         'science'),
  ('01JD00000000000000000SBJ04', 'biology',          'Biology',           'science'),
  ('01JD00000000000000000SBJ05', 'computer_science', 'Computer science',  'science'),
  ('01JD00000000000000000SBJ06', 'history',          'History',           'humanities'),
  ('01JD00000000000000000SBJ07', 'philosophy',       'Philosophy',        'humanities'),
  ('01JD00000000000000000SBJ08', 'economics',        'Economics',         'humanities'),
  ('01JD00000000000000000SBJ09', 'geography',        'Geography',         'humanities'),
  ('01JD00000000000000000SBJ10', 'english',          'English',           'language'),
  ('01JD00000000000000000SBJ11', 'languages',        'World languages',   'language'),
  ('01JD00000000000000000SBJ12', 'music',            'Music',             'skill'),
  ('01JD00000000000000000SBJ13', 'art',              'Art and design',    'skill'),
  ('01JD00000000000000000SBJ14', 'general',          'Curiosity',         'curiosity');
