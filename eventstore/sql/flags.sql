-- Service flags: switches the service reads at run time (the table is made by schema v11).

-- name: get_flag
SELECT value, reason, updated_at FROM service_flags WHERE name = %(name)s;

-- name: set_flag
INSERT INTO service_flags (name, value, reason, updated_at)
VALUES (%(name)s, %(value)s, %(reason)s, clock_timestamp())
ON CONFLICT (name) DO UPDATE
SET value = EXCLUDED.value, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at;
