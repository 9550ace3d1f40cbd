-- The daily spend cap (contracts §10).

-- name: spend_status
-- Today's (UTC) spend from the model runs recorded in the log so far, and the over-quota
-- flag. Reads the log directly until the projections' daily aggregate exists.
SELECT
  (SELECT coalesce(sum((payload_json ->> 'cost_usd')::numeric), 0)
   FROM events
   WHERE type = 'model_run.recorded' AND ts >= date_trunc('day', now(), 'UTC')),
  f.value,
  f.reason
FROM (SELECT 1) AS one
LEFT JOIN service_flags AS f ON f.name = %(flag)s;

-- name: set_flag
INSERT INTO service_flags (name, value, reason, updated_at)
VALUES (%(flag)s, %(value)s, %(reason)s, now())
ON CONFLICT (name) DO UPDATE
SET value = EXCLUDED.value, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at;
