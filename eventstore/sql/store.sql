-- The event store's queries. Columns of a stored event, in StoredEvent field order:
-- id, position, lesson_id, lesson_seq, session_id, type, type_version, payload_json,
-- metadata_json, ts, and its personal fields from the vault (eventstore/personal.py; NULL
-- for none), read by the same statement: one index probe per event in the database, where
-- a second query per page cost more than the page's own read. Reads run in binary format (EventStore._fetch_events): payload and
-- metadata are cast to text and ts arrives as its raw microsecond count, all through
-- psycopg's C loaders; StoredEvent decodes the three on first access (most readers never
-- touch them). A jsonb or timestamptz loader would cost a Python-level call per value.

-- name: append_lesson
-- A batch lands at lesson_seq expected+1..expected+n, or not at all. The UNIQUE key
-- (lesson_id, lesson_seq) rejects a stale expected_seq; the EXISTS guard rejects one that
-- runs ahead of the log, which would otherwise leave a gap.
INSERT INTO events (id, session_id, lesson_id, lesson_seq, type, type_version,
                    payload_json, metadata_json)
SELECT e.id, e.session_id, %(lesson_id)s, %(expected_seq)s + e.n, e.type, e.type_version,
       e.payload::jsonb, e.metadata::jsonb
FROM unnest(%(ids)s::text[], %(session_ids)s::text[], %(types)s::text[],
            %(versions)s::smallint[], %(payloads)s::text[], %(metadata)s::text[])
     WITH ORDINALITY AS e(id, session_id, type, type_version, payload, metadata, n)
WHERE %(expected_seq)s = 0
   OR EXISTS (SELECT 1 FROM events
              WHERE lesson_id = %(lesson_id)s AND lesson_seq = %(expected_seq)s)
RETURNING id, lesson_seq, ts::text;

-- name: append_lesson_kept
-- append_lesson, with the batch's vault rows (eventstore/personal.py) and the events beside
-- it (no lesson_seq, naming the lesson: the model runs of the calls the batch rests on) in
-- the same statement: one round trip, one commit. Each arrives as one JSON document, as in
-- append_unordered. The events beside are inserted first, as if appended just before the
-- batch (the batch's WHERE waits for them), under the batch's own guard: a stale
-- expected_seq stores nothing at all, and a taken unique key fails the whole statement.
-- One beside already stored (a retry) is left as it is, and so is a vault row.
WITH beside AS (
  INSERT INTO events (id, session_id, lesson_id, type, type_version, payload_json,
                      metadata_json)
  SELECT b.id, b.session_id, %(lesson_id)s, b.type, b.type_version, b.payload, b.metadata
  FROM ROWS FROM (jsonb_to_recordset(%(beside)s::jsonb)
                  AS (id text, session_id text, type text, type_version smallint,
                      payload jsonb, metadata jsonb))
       WITH ORDINALITY AS b(id, session_id, type, type_version, payload, metadata, n)
  WHERE %(expected_seq)s = 0
     OR EXISTS (SELECT 1 FROM events
                WHERE lesson_id = %(lesson_id)s AND lesson_seq = %(expected_seq)s)
  ORDER BY b.n
  ON CONFLICT (id) DO NOTHING
  RETURNING id, lesson_seq, ts
), batch AS (
  INSERT INTO events (id, session_id, lesson_id, lesson_seq, type, type_version,
                      payload_json, metadata_json)
  SELECT e.id, e.session_id, %(lesson_id)s, %(expected_seq)s + e.n, e.type, e.type_version,
         e.payload, e.metadata
  FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb)
                  AS (id text, session_id text, type text, type_version smallint,
                      payload jsonb, metadata jsonb))
       WITH ORDINALITY AS e(id, session_id, type, type_version, payload, metadata, n)
  WHERE (%(expected_seq)s = 0
         OR EXISTS (SELECT 1 FROM events
                    WHERE lesson_id = %(lesson_id)s AND lesson_seq = %(expected_seq)s))
    AND (SELECT count(*) FROM beside) >= 0  -- true: it makes the rows beside go in first
  ORDER BY e.n
  RETURNING id, lesson_seq, ts
), vault AS (
  INSERT INTO personal_data (event_id, lesson_id, user_id, fields)
  SELECT v.event_id, v.lesson_id, v.user_id, v.fields
  FROM jsonb_to_recordset(%(vault)s::jsonb)
       AS v(event_id text, lesson_id text, user_id text, fields jsonb)
  WHERE v.event_id IN (SELECT id FROM batch UNION ALL SELECT id FROM beside)
  ON CONFLICT (event_id) DO NOTHING
)
SELECT id, lesson_seq, ts::text FROM batch
UNION ALL
SELECT id, lesson_seq, ts::text FROM beside;

-- name: append_one
-- append_lesson for a batch of one, with plain parameters: a single event is the common
-- append, and building six one-element arrays cost more client time than the INSERT.
INSERT INTO events (id, session_id, lesson_id, lesson_seq, type, type_version,
                    payload_json, metadata_json)
SELECT %(id)s, %(session_id)s, %(lesson_id)s, %(expected_seq)s + 1, %(type)s,
       %(type_version)s, %(payload)s::jsonb, %(metadata)s::jsonb
WHERE %(expected_seq)s = 0
   OR EXISTS (SELECT 1 FROM events
              WHERE lesson_id = %(lesson_id)s AND lesson_seq = %(expected_seq)s)
RETURNING id, lesson_seq, ts::text;

-- name: append_shared
-- Single-event appends of several callers at once (EventStore's shared appends), each row
-- with its own lesson and its own guard. A row whose guard fails is left out and its caller
-- appends alone; a unique key taken by any row fails the statement, and then every caller
-- appends alone. The vault rows (eventstore/personal.py) of the events that land go in the
-- same statement: one round trip and one commit in autocommit, where a transaction around
-- the INSERT and a second one for the vault took four.
-- OFFSET 0 keeps each row's guard an index probe. Without it the planner may answer the
-- OR'ed EXISTS with a hash of the whole events table (a "hashed SubPlan"), which it
-- prefers while the table is new and its statistics say empty, and a connection's
-- prepared statement kept that plan: every shared append scanned the whole log, 3,000
-- appends/s instead of 8,000 in the first minute of a new database (until autovacuum's
-- ANALYZE invalidated the plan). An EXISTS with an OFFSET is never turned into a hash.
WITH landed AS (
  INSERT INTO events (id, session_id, lesson_id, lesson_seq, type, type_version,
                      payload_json, metadata_json)
  SELECT e.id, e.session_id, e.lesson_id, e.expected_seq + 1, e.type, e.type_version,
         e.payload::jsonb, e.metadata::jsonb
  FROM unnest(%(ids)s::text[], %(session_ids)s::text[], %(lesson_ids)s::text[],
              %(expected_seqs)s::int[], %(types)s::text[], %(versions)s::smallint[],
              %(payloads)s::text[], %(metadata)s::text[])
       WITH ORDINALITY AS e(id, session_id, lesson_id, expected_seq, type, type_version,
                            payload, metadata, n)
  WHERE e.expected_seq = 0
     OR EXISTS (SELECT 1 FROM events AS x
                WHERE x.lesson_id = e.lesson_id AND x.lesson_seq = e.expected_seq
                OFFSET 0)
  ORDER BY e.n
  RETURNING id, lesson_seq, ts
), vault AS (
  INSERT INTO personal_data (event_id, lesson_id, user_id, fields)
  SELECT v.event_id, v.lesson_id, v.user_id, v.fields
  FROM jsonb_to_recordset(%(vault)s::jsonb)
       AS v(event_id text, lesson_id text, user_id text, fields jsonb)
  WHERE v.event_id IN (SELECT id FROM landed)
  ON CONFLICT (event_id) DO NOTHING
)
SELECT id, lesson_seq, ts::text FROM landed;

-- name: append_lesson_at_end
-- A batch that depends on no lesson state (a narration clip's audio.ready) lands after
-- whatever the log holds, in one statement. Two writers that read the same head in the same
-- instant collide on (lesson_id, lesson_seq); the loser retries.
WITH head AS (
  SELECT coalesce(max(lesson_seq), 0) AS seq FROM events WHERE lesson_id = %(lesson_id)s
)
INSERT INTO events (id, session_id, lesson_id, lesson_seq, type, type_version,
                    payload_json, metadata_json)
SELECT e.id, e.session_id, %(lesson_id)s, head.seq + e.n, e.type, e.type_version,
       e.payload::jsonb, e.metadata::jsonb
FROM head,
     unnest(%(ids)s::text[], %(session_ids)s::text[], %(types)s::text[],
            %(versions)s::smallint[], %(payloads)s::text[], %(metadata)s::text[])
     WITH ORDINALITY AS e(id, session_id, type, type_version, payload, metadata, n)
RETURNING id, lesson_seq, ts::text;

-- name: append_unordered
-- Session-level events (no lesson_seq), idempotent by id, with their vault rows: one
-- statement, so one round trip and one commit with no transaction around it. The batch
-- arrives as one JSON array (payloads embedded as they will be stored), which the client
-- encodes in C; seven text arrays cost a Python-level escape of every element.
WITH kept AS (
  INSERT INTO personal_data (event_id, lesson_id, user_id, fields)
  SELECT v.event_id, v.lesson_id, v.user_id, v.fields
  FROM jsonb_to_recordset(%(vault)s::jsonb)
       AS v(event_id text, lesson_id text, user_id text, fields jsonb)
  ON CONFLICT (event_id) DO NOTHING
)
INSERT INTO events (id, session_id, lesson_id, type, type_version, payload_json, metadata_json)
SELECT e.id, e.session_id, e.lesson_id, e.type, e.type_version, e.payload, e.metadata
FROM ROWS FROM (jsonb_to_recordset(%(events)s::jsonb)
                AS (id text, session_id text, lesson_id text, type text,
                    type_version smallint, payload jsonb, metadata jsonb))
     WITH ORDINALITY AS e(id, session_id, lesson_id, type, type_version, payload, metadata, n)
ORDER BY e.n
ON CONFLICT (id) DO NOTHING
RETURNING id, lesson_seq, ts::text;

-- name: events_by_id
SELECT e.id, e.position, e.lesson_id, e.lesson_seq, e.session_id, e.type, e.type_version,
       e.payload_json::text, e.metadata_json::text, e.ts,
       (SELECT p.fields::text FROM personal_data AS p WHERE p.event_id = e.id)
FROM events AS e WHERE e.id = ANY(%(ids)s::text[]);

-- name: lesson_head
SELECT coalesce(max(lesson_seq), 0) FROM events WHERE lesson_id = %(lesson_id)s;

-- name: read_lesson
SELECT e.id, e.position, e.lesson_id, e.lesson_seq, e.session_id, e.type, e.type_version,
       e.payload_json::text, e.metadata_json::text, e.ts,
       (SELECT p.fields::text FROM personal_data AS p WHERE p.event_id = e.id)
FROM events AS e
WHERE e.lesson_id = %(lesson_id)s AND e.lesson_seq > %(after_seq)s
ORDER BY e.lesson_seq
LIMIT %(limit)s;

-- name: read_lessons
-- Whole logs of several lessons at once (a batch of subscriptions' catch-up reads).
SELECT e.id, e.position, e.lesson_id, e.lesson_seq, e.session_id, e.type, e.type_version,
       e.payload_json::text, e.metadata_json::text, e.ts,
       (SELECT p.fields::text FROM personal_data AS p WHERE p.event_id = e.id)
FROM events AS e
WHERE e.lesson_id = ANY(%(lesson_ids)s::text[]) AND e.lesson_seq IS NOT NULL
ORDER BY e.lesson_id, e.lesson_seq;

-- name: read_all
SELECT e.id, e.position, e.lesson_id, e.lesson_seq, e.session_id, e.type, e.type_version,
       e.payload_json::text, e.metadata_json::text, e.ts,
       (SELECT p.fields::text FROM personal_data AS p WHERE p.event_id = e.id)
FROM events AS e
WHERE e.position > %(after)s
  AND (%(type)s::text IS NULL OR e.type = %(type)s::text)
  AND (%(lesson_id)s::text IS NULL OR e.lesson_id = %(lesson_id)s::text)
ORDER BY e.position
LIMIT %(limit)s;

-- name: head_position
SELECT coalesce(max(position), 0) FROM events;

-- name: sequence_pending
-- One sequencer pass (schema_v4.sql): number up to `batch` committed, unnumbered rows after
-- the current maximum, in insert order, under the sequencer's advisory lock; NOTIFY once.
SELECT numbered, head FROM events_sequence(%(key)s, %(limit)s, %(channel)s);

-- name: read_types_page
-- Events of some types in (after, upto], in position order (projections read in their own
-- transaction, against a head they read first).
SELECT e.id, e.position, e.lesson_id, e.lesson_seq, e.session_id, e.type, e.type_version,
       e.payload_json, e.metadata_json, e.ts,
       (SELECT p.fields::text FROM personal_data AS p WHERE p.event_id = e.id)
FROM events AS e
WHERE e.position > %(after)s AND e.position <= %(upto)s AND e.type = ANY(%(types)s::text[])
ORDER BY e.position
LIMIT %(limit)s;

-- name: model_spend_since
-- What the model runs recorded since a time cost (the spend cap's "today so far"). The
-- daily aggregate lags by design; the cap must not.
SELECT coalesce(sum((payload_json ->> 'cost_usd')::numeric), 0)
FROM events
WHERE type = 'model_run.recorded' AND ts >= %(since)s;

-- name: model_spend_tally
-- The same, as a running total (eventstore/store.SpendTally) can keep it: the cost of the
-- numbered runs since `since` with a position after `after` (all of them when `after` is
-- NULL, found by time), the cost of the runs not numbered yet, and the log's head, all in
-- one snapshot. A position is never given below the head, so the runs counted here are
-- never counted again, and the runs still unnumbered are counted, not kept, until they are.
WITH runs AS (
  SELECT position, (payload_json ->> 'cost_usd')::numeric AS cost
  FROM events
  WHERE type = 'model_run.recorded' AND ts >= %(since)s AND %(after)s::bigint IS NULL
  UNION ALL
  SELECT position, (payload_json ->> 'cost_usd')::numeric
  FROM events
  WHERE type = 'model_run.recorded' AND ts >= %(since)s AND position > %(after)s::bigint
  UNION ALL
  SELECT position, (payload_json ->> 'cost_usd')::numeric
  FROM events
  WHERE position IS NULL AND type = 'model_run.recorded' AND ts >= %(since)s
    AND %(after)s::bigint IS NOT NULL
)
SELECT coalesce(sum(cost) FILTER (WHERE position IS NOT NULL), 0),
       coalesce(sum(cost) FILTER (WHERE position IS NULL), 0),
       (SELECT coalesce(max(position), 0) FROM events)
FROM runs;
