-- Schema v16 · owned by commands/: where the student is, found without scanning the log.
--
-- ask/adjust/visualize without a beat_ord read the student's last `beat.advance` client
-- event for the lesson (interactions.sql, advanced_to). With no index for it that was a
-- scan of every event (34 ms at 500,000 events, growing with all traffic); this one holds
-- only beat.advance rows, newest last per lesson.
CREATE INDEX idx_events_beat_advance ON events (lesson_id, insert_no)
  WHERE type = 'beat.advance' AND lesson_seq IS NULL;
