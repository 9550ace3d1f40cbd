-- Schema v3 · the event store's own migration: the contract's `events` table becomes the log.
--
-- * The log references nothing derived from it: the foreign keys to sessions (ON DELETE
--   CASCADE) and lessons (ON DELETE SET NULL) would let a projection rebuild or a cascade
--   rewrite history, so they go.
-- * lesson_seq: 1, 2, 3… per lesson, gap-free; the UNIQUE key (not Python) enforces order.
--   Session-level events (analytics, model runs outside a lesson) carry no lesson_seq.
-- * position: the global order for catch-up readers, assigned after commit by the sequencer
--   (see eventstore/store.py), so commit order and read order can never disagree.
-- * insert_no: the order rows were inserted in; the sequencer numbers pending rows by it,
--   which keeps each lesson's events in lesson_seq order in the global log too.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_session_id_fkey;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_lesson_id_fkey;

ALTER TABLE events
  ADD COLUMN lesson_seq    INT,
  ADD COLUMN position      BIGINT,
  ADD COLUMN insert_no     BIGINT GENERATED ALWAYS AS IDENTITY,
  ADD COLUMN type_version  SMALLINT NOT NULL DEFAULT 1,
  ADD COLUMN metadata_json JSONB NOT NULL DEFAULT '{}',
  ADD CONSTRAINT events_lesson_seq_key UNIQUE (lesson_id, lesson_seq),
  ADD CONSTRAINT events_lesson_seq_positive CHECK (lesson_seq IS NULL OR lesson_seq >= 1),
  ADD CONSTRAINT events_lesson_seq_needs_lesson CHECK (lesson_seq IS NULL OR lesson_id IS NOT NULL),
  ADD CONSTRAINT events_payload_is_object CHECK (jsonb_typeof(payload_json) = 'object');

CREATE UNIQUE INDEX events_position_key ON events (position);
-- The sequencer's work queue: only rows still waiting for a position are in it.
CREATE INDEX events_unsequenced ON events (insert_no) WHERE position IS NULL;
CREATE INDEX events_type_position ON events (type, position);

-- Append-only. The one change allowed is the sequencer giving a pending row its position.
CREATE FUNCTION events_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE'
     AND OLD.position IS NULL AND NEW.position IS NOT NULL
     AND (NEW.id, NEW.session_id, NEW.lesson_id, NEW.lesson_seq, NEW.type, NEW.payload_json,
          NEW.ts, NEW.insert_no, NEW.type_version, NEW.metadata_json)
         IS NOT DISTINCT FROM
         (OLD.id, OLD.session_id, OLD.lesson_id, OLD.lesson_seq, OLD.type, OLD.payload_json,
          OLD.ts, OLD.insert_no, OLD.type_version, OLD.metadata_json)
  THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'events is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege', HINT = 'append a new event instead';
END
$$;

CREATE TRIGGER events_append_only
  BEFORE UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION events_reject_change();
CREATE TRIGGER events_no_truncate
  BEFORE TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();
