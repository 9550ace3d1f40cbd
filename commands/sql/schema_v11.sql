-- Schema v11 · owned by commands/: the guardrails' state (idempotency, rate limits, spend flag).

-- Idempotency keys are claimed before the work runs, so a row exists while a request is
-- still in flight: it has no response yet. The contract's key column stays the primary key;
-- the stored key is namespaced "<user_id>:<client key>" (commands/idempotency.py says why).
ALTER TABLE idempotency_keys
  ADD COLUMN state         TEXT NOT NULL DEFAULT 'done',
  ADD COLUMN claim_token   TEXT,
  ADD COLUMN lease_until   TIMESTAMPTZ,
  ADD COLUMN response_body BYTEA,
  ADD COLUMN media_type    TEXT,
  ALTER COLUMN status_code   DROP NOT NULL,
  ALTER COLUMN response_json DROP NOT NULL,
  ADD CONSTRAINT idempotency_keys_state CHECK (state IN ('in_flight', 'done')),
  ADD CONSTRAINT idempotency_keys_done_has_response CHECK (
    state = 'in_flight'
    OR (status_code IS NOT NULL AND response_body IS NOT NULL AND media_type IS NOT NULL)),
  ADD CONSTRAINT idempotency_keys_in_flight_has_lease CHECK (
    state = 'done' OR (claim_token IS NOT NULL AND lease_until IS NOT NULL));

-- Rate buckets are read by (scope, key, bucket) over the last window; the primary key
-- (scope, key, bucket, window_start) already serves that. Purge reads by window_start.
CREATE INDEX idx_rate_buckets_window_start ON rate_buckets (window_start);

-- Today's spend is read from the log until the projections' daily aggregate exists; this
-- keeps that read to today's model runs instead of every event ever stored.
CREATE INDEX idx_events_model_run_ts ON events (ts) WHERE type = 'model_run.recorded';

-- Service flags (the over-quota switch). The projections' migration creates the same table
-- with the same shape; whichever runs first creates it.
CREATE TABLE IF NOT EXISTS service_flags (
  name       TEXT PRIMARY KEY,
  value      BOOLEAN NOT NULL,
  reason     TEXT,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
