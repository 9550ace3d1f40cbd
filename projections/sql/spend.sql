-- Daily spend: day (UTC) × model × purpose, recomputed from model_runs.

-- name: delete_day
DELETE FROM spend_daily WHERE day = %(day)s;

-- name: aggregate_day
INSERT INTO spend_daily (day, model, purpose, runs, prompt_tokens, completion_tokens, cost_usd,
                         updated_at)
SELECT %(day)s::date, model, purpose, count(*), coalesce(sum(prompt_tokens), 0),
       coalesce(sum(completion_tokens), 0), coalesce(sum(cost_usd), 0), clock_timestamp()
FROM model_runs
WHERE ts >= (%(day)s::date)::timestamp AT TIME ZONE 'UTC'
  AND ts < ((%(day)s::date) + 1)::timestamp AT TIME ZONE 'UTC'
GROUP BY model, purpose
RETURNING cost_usd;

-- name: spend_on
-- What a day has cost so far, straight from the ledger.
SELECT coalesce(sum(cost_usd), 0) FROM model_runs
WHERE ts >= (%(day)s::date)::timestamp AT TIME ZONE 'UTC'
  AND ts < ((%(day)s::date) + 1)::timestamp AT TIME ZONE 'UTC';

-- name: report
SELECT day, model, purpose, runs, prompt_tokens, completion_tokens, cost_usd
FROM spend_daily
WHERE day > %(today)s::date - %(days)s::int AND day <= %(today)s::date
ORDER BY day DESC, cost_usd DESC, model, purpose;
