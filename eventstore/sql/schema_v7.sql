-- Schema v7 · an append writes two index entries fewer per event (issues 12 and 14).
--
-- A row is inserted with position NULL and the sequencer numbers it after commit, so every
-- insert used to put a NULL entry into the two indexes on position, which nothing ever
-- reads (every reader asks for `position > n`, `max(position)` or `position = n`), and the
-- sequencer's update then added the real entries. Partial indexes over numbered rows skip
-- that first write. Same keys, same uniqueness (NULLs were never equal to each other), and
-- the planner still picks them: a strict comparison on position implies IS NOT NULL, and
-- max() adds that condition itself.
DROP INDEX events_position_key;
CREATE UNIQUE INDEX events_position_key ON events (position) WHERE position IS NOT NULL;

DROP INDEX events_type_position;
CREATE INDEX events_type_position ON events (type, position) WHERE position IS NOT NULL;
