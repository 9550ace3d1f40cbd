-- Schema v5 · the sequencer's write of each row gets cheaper (issue 14). Same guarantees.
--
-- * Append-only, enforced without a plpgsql call per numbered row. v3's row trigger ran
--   events_reject_change() for every UPDATE, so each sequencer pass paid one function call
--   and a ten-column comparison per event. Now the rules sit in the triggers' declarations,
--   which Postgres checks in C:
--     - an UPDATE that names any content column is rejected (the function raises);
--     - an UPDATE of position is rejected unless it turns NULL into a value (the WHEN);
--     - DELETE and TRUNCATE are rejected as before.
--   The sequencer's `SET position = …` on a pending row matches no rule and runs no function.
DROP TRIGGER events_append_only ON events;

CREATE TRIGGER events_content_is_final
  BEFORE UPDATE OF id, session_id, lesson_id, lesson_seq, type, payload_json, ts, insert_no,
                   type_version, metadata_json
  ON events
  FOR EACH ROW EXECUTE FUNCTION events_reject_change();

CREATE TRIGGER events_position_set_once
  BEFORE UPDATE OF position ON events
  FOR EACH ROW WHEN (OLD.position IS NOT NULL OR NEW.position IS NULL)
  EXECUTE FUNCTION events_reject_change();

CREATE TRIGGER events_no_delete
  BEFORE DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION events_reject_change();
