-- The model_runs projection: model_runs, and its own map from a lesson's beat slot to the
-- slot's beat id (model_run_beats), so beat_id is resolved from the log alone.

-- name: load_beat_ids
SELECT lesson_id, ord, beat_id FROM {model_run_beats} WHERE lesson_id = ANY(%(ids)s::text[]);

-- name: insert_beat_ids
INSERT INTO {model_run_beats} (lesson_id, ord, beat_id)
SELECT * FROM unnest(%(lesson_id)s::text[], %(ord)s::int[], %(beat_id)s::text[]);

-- name: insert_model_runs
-- A run id recorded twice (a retried command) is one call: the first record stands.
INSERT INTO {model_runs} (id, trace_id, lesson_id, beat_id, model, purpose, prompt_tokens,
                          completion_tokens, cost_usd, latency_ms, status, error_code, ts,
                          beat_ord, position)
SELECT id, trace_id, lesson_id, beat_id, model, purpose, prompt_tokens, completion_tokens,
       cost_usd, latency_ms, status, error_code, ts, beat_ord, position
FROM unnest(%(id)s::text[], %(trace_id)s::text[], %(lesson_id)s::text[], %(beat_id)s::text[],
            %(model)s::text[], %(purpose)s::text[], %(prompt_tokens)s::int[],
            %(completion_tokens)s::int[], %(cost_usd)s::numeric[], %(latency_ms)s::int[],
            %(status)s::text[], %(error_code)s::text[], %(ts)s::timestamptz[],
            %(beat_ord)s::int[], %(position)s::bigint[])
     AS u(id, trace_id, lesson_id, beat_id, model, purpose, prompt_tokens, completion_tokens,
          cost_usd, latency_ms, status, error_code, ts, beat_ord, position)
ORDER BY position
ON CONFLICT (id) DO NOTHING;
