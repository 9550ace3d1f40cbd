-- Generated assets (audio, diagrams, simulations, make-me outputs): one row per object.
-- content_hash is the cache key that produced the object (contracts §5: TTS
-- sha256(narration_text + voice_id), visualization sha256(beat_id + viz_request), make-me
-- sha256(lesson_id + output_type)); its unique index is what stores each object once.

-- name: asset_by_hash
SELECT id, content_hash, type, url, mime, size_bytes
FROM assets
WHERE content_hash = %(content_hash)s AND deleted_at IS NULL;

-- name: asset_by_id
SELECT id, content_hash, type, url, mime, size_bytes
FROM assets
WHERE id = %(id)s AND deleted_at IS NULL;

-- name: asset_insert
-- The loser of a race for the same hash inserts nothing and reads the winner's row.
INSERT INTO assets (id, lesson_id, beat_id, type, url, mime, size_bytes, content_hash)
VALUES (%(id)s, %(lesson_id)s, %(beat_id)s, %(type)s, %(url)s, %(mime)s, %(size_bytes)s,
        %(content_hash)s)
ON CONFLICT (content_hash) WHERE content_hash IS NOT NULL DO NOTHING
RETURNING id, content_hash, type, url, mime, size_bytes;

-- name: lock_hash
-- Held while an object and its row are written (put) or while the purge deletes an object
-- whose row it deleted: the purge never deletes bytes a new row is about to name.
SELECT pg_advisory_xact_lock(%(space)s, hashtext(%(content_hash)s));

-- name: asset_row_exists
SELECT EXISTS (SELECT 1 FROM assets WHERE content_hash = %(content_hash)s);

-- name: asset_by_hash_any
-- Inside put's transaction, after a lost race: the winner's row.
SELECT id, content_hash, type, url, mime, size_bytes
FROM assets
WHERE content_hash = %(content_hash)s;

-- name: assets_used_elsewhere
-- Of the narration clips of lessons being erased, those another lesson still uses. A
-- lesson counts unless it is one of these or already erased (its owner was purged). Uses:
-- * its log names the clip (beat.completed, audio.ready: not personal);
-- * its vault holds the clip's narration text, a beat's or an ask answer's: the same words
--   are the same clip (an ask's clip URL is not logged);
-- * one of its make-me videos names the clip among its slides (makeme response `clips`).
-- Each candidate stops at its first live user. Every lookup is an index probe (schema
-- v15): a URL is matched by its last 74 characters, which are a clip's key
-- (audio/<64 hex>.mp3) whatever the host, CDN or prefix before it; a text by its md5, then
-- exactly.
SELECT c.hash
FROM unnest(%(hashes)s::text[], %(keys)s::text[], %(texts)s::text[]) AS c(hash, key, text)
WHERE EXISTS (
  SELECT 1
  FROM (
    SELECT e.lesson_id
    FROM events AS e
    WHERE e.type IN ('beat.completed', 'audio.ready')
      AND e.payload_json->>'audio_url' IS NOT NULL
      AND right(e.payload_json->>'audio_url', 74) = c.key
    UNION ALL
    SELECT p.lesson_id
    FROM personal_data AS p
    WHERE coalesce(p.fields->>'narration_text', p.fields->'response'->>'narration_text')
            IS NOT NULL
      AND md5(coalesce(p.fields->>'narration_text', p.fields->'response'->>'narration_text'))
            = md5(c.text)
      AND coalesce(p.fields->>'narration_text', p.fields->'response'->>'narration_text')
            = c.text
    UNION ALL
    SELECT p.lesson_id
    FROM personal_data AS p
    WHERE p.fields->'response' ? 'clips' AND p.fields->'response'->'clips' ? c.key
  ) AS used
  WHERE used.lesson_id IS NOT NULL
    AND used.lesson_id <> ALL(%(lesson_ids)s::text[])
    AND NOT EXISTS (
      SELECT 1 FROM events AS x WHERE x.type = 'lesson.erased' AND x.lesson_id = used.lesson_id
    )
);

-- name: delete_assets
-- The rows go and their keys are queued in one statement (in the purge's transaction);
-- returns (rows deleted, rows kept because another lesson uses them).
WITH gone AS (
  DELETE FROM assets WHERE content_hash = ANY(%(hashes)s::text[]) RETURNING content_hash
), queued AS (
  INSERT INTO asset_deletions (key, content_hash)
  SELECT c.key, c.hash
  FROM unnest(%(keys)s::text[], %(hashes)s::text[]) AS c(key, hash)
  WHERE c.hash IN (SELECT content_hash FROM gone)
  ON CONFLICT (key) DO NOTHING
)
SELECT (SELECT count(*) FROM gone),
       (SELECT count(*) FROM assets WHERE content_hash = ANY(%(kept)s::text[]));

-- name: queued_deletions
SELECT key, content_hash FROM asset_deletions ORDER BY queued_at, key;

-- name: dequeue_deletion
DELETE FROM asset_deletions WHERE key = %(key)s;
