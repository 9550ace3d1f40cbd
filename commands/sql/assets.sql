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
