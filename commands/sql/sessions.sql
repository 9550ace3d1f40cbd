-- name: refresh_session
-- A valid, unexpired token of a live user: slide its expiry and return who it is.
UPDATE sessions AS s
SET last_seen_at = now(), expires_at = now() + make_interval(days => %(days)s)
FROM users AS u
WHERE s.token_hash = %(token_hash)s
  AND u.id = s.user_id
  AND s.expires_at > now()
  AND s.ended_at IS NULL
  AND s.deleted_at IS NULL
  AND u.deleted_at IS NULL
RETURNING s.user_id, s.id, s.expires_at, u.email IS NOT NULL;

-- name: create_anonymous_session
WITH new_user AS (
  INSERT INTO users (id, anon_id) VALUES (%(user_id)s, %(anon_id)s)
  RETURNING id
)
INSERT INTO sessions (id, user_id, client_meta_json, token_hash, expires_at)
SELECT %(session_id)s, new_user.id, %(client_meta)s::jsonb, %(token_hash)s,
       now() + make_interval(days => %(days)s)
FROM new_user
RETURNING user_id, id, expires_at;

-- name: authenticate
SELECT s.user_id, s.id, u.email IS NOT NULL
FROM sessions AS s JOIN users AS u ON u.id = s.user_id
WHERE s.token_hash = %(token_hash)s
  AND s.expires_at > now()
  AND s.ended_at IS NULL
  AND s.deleted_at IS NULL
  AND u.deleted_at IS NULL;
