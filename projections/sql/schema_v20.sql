-- Schema v20 · owned by projections/: the read side's bookkeeping and its extra columns.
--
-- Projection tables are derived data: every value in them comes from the log (timestamps
-- are event timestamps, never now()), so a rebuild from position 0 gives the same rows.

-- One row per projection: the last log position applied, moved in the same transaction as
-- the projection's rows (exactly once). A handler failure stops only that projection:
-- state 'failed' with the position and the error, until a fix or an explicit skip.
CREATE TABLE projection_checkpoints (
  name            TEXT PRIMARY KEY,
  position        BIGINT NOT NULL DEFAULT 0,
  state           TEXT NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'stopped', 'failed')),
  error           TEXT,
  failed_position BIGINT,
  updated_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
INSERT INTO projection_checkpoints (name) VALUES ('lessons'), ('model_runs');

-- Events an operator chose to skip (`omnitutor projections skip`); a rebuild skips them too,
-- so the rebuilt tables equal the live ones.
CREATE TABLE projection_skips (
  name       TEXT NOT NULL,
  position   BIGINT NOT NULL,
  error      TEXT,
  skipped_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  PRIMARY KEY (name, position)
);

-- A rebuild in progress: the shadow tables' checkpoint (resumable after an interruption).
CREATE TABLE projection_rebuilds (
  name       TEXT PRIMARY KEY,
  position   BIGINT NOT NULL DEFAULT 0,
  started_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- lessons: the locked plan, and the time of the lesson's last event.
ALTER TABLE lessons
  ADD COLUMN locked_revision  INT,
  ADD COLUMN total_beats      INT,
  ADD COLUMN updated_at       TIMESTAMPTZ;
-- "My library": a user's live lessons, newest first (keyset pagination on created_at, id).
CREATE INDEX idx_lessons_user_created ON lessons (user_id, created_at DESC, id DESC)
  WHERE deleted_at IS NULL;

-- beats: one row per (lesson, ord) slot, created when the log first mentions that beat;
-- its id is the first beat_id the log gave the slot, and a regenerated beat reuses the row.
ALTER TABLE beats
  ADD COLUMN title         TEXT,
  ADD COLUMN model         TEXT,
  ADD COLUMN error_code    TEXT,
  ADD COLUMN error_message TEXT,
  ADD COLUMN updated_at    TIMESTAMPTZ;

CREATE INDEX idx_interactions_lesson ON interactions (lesson_id, ts);
CREATE INDEX idx_plan_revisions_lesson ON plan_revisions (lesson_id, revision_num);

-- model_runs is the ledger of every model call, including calls for a lesson that never got
-- a row (input refused before the lesson was created) and calls recorded before the lesson's
-- first event. Foreign keys from it into another projection's tables would make its rows
-- depend on how far that other projection had got, so a rebuild could differ from the live
-- table; the ids stay as recorded and reads join.
ALTER TABLE model_runs
  DROP CONSTRAINT IF EXISTS model_runs_lesson_id_fkey,
  DROP CONSTRAINT IF EXISTS model_runs_beat_id_fkey,
  ADD COLUMN beat_ord INT,
  ADD COLUMN position BIGINT;
CREATE INDEX idx_model_runs_lesson ON model_runs (lesson_id) WHERE lesson_id IS NOT NULL;

-- The model_runs projection's own map from a lesson's beat slot to its beat id (the first
-- beat_id the log gave the slot, as in beats), so model_runs.beat_id is resolved from the log
-- alone.
CREATE TABLE model_run_beats (
  lesson_id TEXT NOT NULL,
  ord       INT NOT NULL,
  beat_id   TEXT NOT NULL,
  PRIMARY KEY (lesson_id, ord)
);

-- Daily spend, day (UTC) × model × purpose, filled from model_runs by `omnitutor spend
-- aggregate` (the nightly job).
CREATE TABLE spend_daily (
  day               DATE NOT NULL,
  model             TEXT NOT NULL,
  purpose           TEXT NOT NULL,
  runs              INT NOT NULL,
  prompt_tokens     BIGINT NOT NULL,
  completion_tokens BIGINT NOT NULL,
  cost_usd          NUMERIC(14,5) NOT NULL,
  updated_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  PRIMARY KEY (day, model, purpose)
);
