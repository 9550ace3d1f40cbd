-- Schema v12 · owned by commands/: who generates each lesson's beats.
--
-- One row per lesson whose generation was asked for (its stream was opened). The process
-- holding a row's lease (owner, until expires_at) is the only one generating that lesson;
-- it renews the lease every few seconds. A lease that lapses (its process died) or was
-- released is free, and any process's supervisor claims it with FOR UPDATE SKIP LOCKED.
-- The row is derived bookkeeping, not history: the log says what was generated, and the
-- log's expected_seq is what keeps two owners from both completing a beat.
CREATE TABLE lesson_generation (
  lesson_id   TEXT PRIMARY KEY,
  state       TEXT NOT NULL DEFAULT 'pending'
              CHECK (state IN ('pending', 'done', 'failed', 'abandoned')),
  owner       TEXT,                                  -- worker id; NULL when released
  expires_at  TIMESTAMPTZ NOT NULL DEFAULT now(),    -- the lease is free after this
  claims      INT NOT NULL DEFAULT 0,                -- how many times a worker took it
  created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The supervisors' work queue: only lessons still to generate are in it.
CREATE INDEX idx_lesson_generation_claimable
  ON lesson_generation (expires_at) WHERE state = 'pending';
