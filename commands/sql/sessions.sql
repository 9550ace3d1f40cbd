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
-- A valid token of a live user. The 30-day expiry slides on every authenticated request
-- (written at most once a minute per session, so a busy client does not write per request).
-- `ended`: the visit behind the token is over (closed by a beacon, or idle too long); the
-- caller starts a new one with `continue_session`.
WITH found AS (
  SELECT s.id, s.user_id, u.email IS NOT NULL AS signed_in, s.last_seen_at,
         (s.ended_at IS NOT NULL
          OR s.last_seen_at < now() - make_interval(mins => %(idle_min)s)) AS ended
  FROM sessions AS s JOIN users AS u ON u.id = s.user_id
  WHERE s.token_hash = %(token_hash)s
    AND s.expires_at > now()
    AND s.deleted_at IS NULL
    AND u.deleted_at IS NULL
), touched AS (
  UPDATE sessions AS s
  SET last_seen_at = now(), expires_at = now() + make_interval(days => %(days)s)
  FROM found
  WHERE s.id = found.id AND NOT found.ended
    AND found.last_seen_at < now() - interval '1 minute'
  RETURNING s.id
)
SELECT user_id, id, signed_in, ended FROM found;

-- name: authenticate_many
-- `authenticate` for every token of a batch at once (commands/sessions.Authenticator): one
-- autocommit statement for all the requests that arrived together. The sliding expiry skips
-- a row another transaction holds (SKIP LOCKED: it is being written anyway), so two batches
-- never wait for each other, let alone deadlock over rows locked in different orders.
WITH found AS (
  SELECT s.token_hash, s.id, s.user_id, u.email IS NOT NULL AS signed_in, s.last_seen_at,
         (s.ended_at IS NOT NULL
          OR s.last_seen_at < now() - make_interval(mins => %(idle_min)s)) AS ended
  FROM sessions AS s JOIN users AS u ON u.id = s.user_id
  WHERE s.token_hash = ANY(%(token_hashes)s::text[])
    AND s.expires_at > now()
    AND s.deleted_at IS NULL
    AND u.deleted_at IS NULL
), stale AS (
  SELECT s.id FROM sessions AS s JOIN found ON found.id = s.id
  WHERE NOT found.ended AND found.last_seen_at < now() - interval '1 minute'
  FOR UPDATE OF s SKIP LOCKED
), touched AS (
  UPDATE sessions AS s
  SET last_seen_at = now(), expires_at = now() + make_interval(days => %(days)s)
  FROM stale
  WHERE s.id = stale.id
  RETURNING s.id
)
SELECT token_hash, user_id, id, signed_in, ended FROM found;

-- name: continue_session
-- The visit behind this cookie ended: it keeps its ended_at (the time it was last seen, when
-- the idle sweep has not set one yet) and a new visit of the same user takes the token over.
-- Of two requests racing here, one moves the token; the other finds nothing and reads again.
WITH old AS (
  UPDATE sessions
  SET token_hash = NULL, ended_at = coalesce(ended_at, last_seen_at)
  WHERE id = %(session_id)s AND token_hash = %(token_hash)s
  RETURNING user_id, client_meta_json
)
INSERT INTO sessions (id, user_id, client_meta_json, token_hash, expires_at)
SELECT %(new_session_id)s, user_id, client_meta_json, %(token_hash)s,
       now() + make_interval(days => %(days)s)
FROM old
RETURNING id;

-- name: end_visit
-- A tab-close beacon (lesson.abandon): the visit ends now; the cookie still works.
UPDATE sessions SET ended_at = now() WHERE id = %(session_id)s AND ended_at IS NULL;

-- name: end_idle_sessions
-- Sessions quiet for longer than the idle limit end when they were last seen.
WITH idle AS (
  SELECT id FROM sessions
  WHERE ended_at IS NULL AND last_seen_at < now() - make_interval(mins => %(idle_min)s)
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
UPDATE sessions AS s SET ended_at = s.last_seen_at FROM idle WHERE s.id = idle.id;
