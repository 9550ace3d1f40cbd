-- Accounts: magic links, linking an email, deletion and purge (commands/accounts.py).

-- name: insert_magic_link
-- `token` holds the sha256 of the token (hex); the token itself is only in the mail.
INSERT INTO magic_links (token, user_id, email, expires_at)
VALUES (%(token_hash)s, %(user_id)s, %(email)s, now() + make_interval(mins => %(ttl_min)s));

-- name: consume_magic_link
-- Atomic and single use: of two clicks racing, one updates the row and the other finds
-- nothing to update.
UPDATE magic_links SET consumed_at = now()
WHERE token = %(token_hash)s AND consumed_at IS NULL AND expires_at > now()
RETURNING user_id, email;

-- name: live_user
SELECT id, email FROM users WHERE id = %(user_id)s AND deleted_at IS NULL FOR UPDATE;

-- name: account_by_email
SELECT id FROM users WHERE email = %(email)s AND deleted_at IS NULL FOR UPDATE;

-- name: free_deleted_email
-- A deleted account's address may sign up again at once; the old row forgets it.
UPDATE users SET email = NULL, updated_at = now()
WHERE email = %(email)s AND deleted_at IS NOT NULL;

-- name: set_email
UPDATE users SET email = %(email)s, updated_at = now() WHERE id = %(user_id)s;

-- name: create_user
INSERT INTO users (id, anon_id, email) VALUES (%(user_id)s, %(anon_id)s, %(email)s);

-- name: merge_user
-- The anonymous user's work moved into an account: it is soft-deleted now, purged later.
UPDATE users SET deleted_at = now(), merged_into = %(into)s, updated_at = now()
WHERE id = %(user_id)s;

-- name: end_session
-- Rotation: the old token stops working at once.
UPDATE sessions SET ended_at = coalesce(ended_at, now()), token_hash = NULL
WHERE id = %(session_id)s;

-- name: create_session
INSERT INTO sessions (id, user_id, client_meta_json, token_hash, expires_at)
VALUES (%(session_id)s, %(user_id)s, %(client_meta)s::jsonb, %(token_hash)s,
        now() + make_interval(days => %(days)s))
RETURNING expires_at;

-- name: owned_lessons
-- The lessons a user owns by the log: the last lesson.created / lesson.transferred of each
-- lesson that ever named them (idx_events_lesson_owner).
WITH named AS (
  SELECT DISTINCT lesson_id FROM events
  WHERE type IN ('lesson.created', 'lesson.transferred')
    AND coalesce(payload_json->>'to_user_id', payload_json->>'user_id') = %(user_id)s
)
SELECT o.lesson_id FROM (
  SELECT DISTINCT ON (e.lesson_id) e.lesson_id,
         coalesce(e.payload_json->>'to_user_id', e.payload_json->>'user_id') AS owner
  FROM events AS e JOIN named USING (lesson_id)
  WHERE e.type IN ('lesson.created', 'lesson.transferred') AND e.lesson_seq IS NOT NULL
  ORDER BY e.lesson_id, e.lesson_seq DESC
) AS o
WHERE o.owner = %(user_id)s
ORDER BY o.lesson_id;

-- name: soft_delete_user
UPDATE users SET deleted_at = now(), updated_at = now()
WHERE id = %(user_id)s AND deleted_at IS NULL;

-- name: soft_delete_sessions
UPDATE sessions
SET deleted_at = coalesce(deleted_at, now()), ended_at = coalesce(ended_at, now()),
    token_hash = NULL
WHERE user_id = %(user_id)s;

-- name: soft_delete_assets
UPDATE assets SET deleted_at = now()
WHERE lesson_id = ANY(%(lesson_ids)s::text[]) AND deleted_at IS NULL;

-- name: drop_magic_links
DELETE FROM magic_links WHERE user_id = %(user_id)s;

-- name: drop_idempotency_keys
-- Stored answers repeat what the student sent (a plan's topic): they go with the account.
DELETE FROM idempotency_keys WHERE user_id = %(user_id)s;

-- name: users_to_purge
SELECT id FROM users
WHERE deleted_at IS NOT NULL AND purged_at IS NULL
  AND deleted_at <= now() - make_interval(days => %(days)s)
ORDER BY deleted_at, id;

-- name: purge_rows
-- Everything beside the log that could hold the user's personal data (asset rows:
-- assets.sql delete_assets, same transaction). The users and sessions rows stay as
-- tombstones (other rows and the log name their ids), emptied.
WITH c AS (
  DELETE FROM cache WHERE key = ANY(%(cache_keys)s::text[]) RETURNING 1
), q AS (
  -- The pre-warm's count of those plan keys keeps the request text behind each key.
  DELETE FROM plan_requests WHERE key = ANY(%(cache_keys)s::text[]) RETURNING 1
), i AS (
  DELETE FROM idempotency_keys WHERE user_id = %(user_id)s RETURNING 1
), m AS (
  DELETE FROM magic_links
  WHERE user_id = %(user_id)s
     OR email = (SELECT email FROM users WHERE id = %(user_id)s)
  RETURNING 1
), r AS (
  DELETE FROM rate_buckets WHERE scope = 'user' AND key = %(user_id)s RETURNING 1
), g AS (
  DELETE FROM lesson_generation WHERE lesson_id = ANY(%(lesson_ids)s::text[]) RETURNING 1
), s AS (
  UPDATE sessions SET client_meta_json = '{}', token_hash = NULL,
                      ended_at = coalesce(ended_at, now()), deleted_at = coalesce(deleted_at, now())
  WHERE user_id = %(user_id)s RETURNING 1
)
UPDATE users
SET email = NULL, settings_json = '{}', purged_at = now(), updated_at = now()
WHERE id = %(user_id)s
RETURNING (SELECT count(*) FROM c);
