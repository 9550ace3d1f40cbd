-- Schema v4 · the sequencer pass as one function, so a pass is one round trip.
--
-- Same scheme as v3's queries (see eventstore/store.py): under a transaction-level
-- advisory lock, number the committed, unnumbered rows after the current maximum, in
-- insert order, and NOTIFY the new head once. In a VOLATILE plpgsql function every
-- statement takes a fresh snapshot (READ COMMITTED), so the numbering statement, which runs
-- after the lock is granted, sees the previous pass's commit. The lock is held until the
-- calling transaction commits.
CREATE FUNCTION events_sequence(lock_key BIGINT, batch INT, channel TEXT)
RETURNS TABLE (numbered BIGINT, head BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(lock_key);
  WITH base AS (
    SELECT coalesce(max(e.position), 0) AS top FROM events AS e
  ), pending AS (
    SELECT e.id, row_number() OVER (ORDER BY e.insert_no) AS n
    FROM (SELECT p.id, p.insert_no FROM events AS p
          WHERE p.position IS NULL
          ORDER BY p.insert_no
          LIMIT batch) AS e
  ), done AS (
    UPDATE events AS e
    SET position = base.top + pending.n
    FROM pending, base
    WHERE e.id = pending.id
    RETURNING e.position
  )
  SELECT count(*), coalesce(max(done.position), 0) INTO numbered, head FROM done;
  IF numbered > 0 THEN
    PERFORM pg_notify(channel, head::text);
  END IF;
  RETURN NEXT;
END
$$;
