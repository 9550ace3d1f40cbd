-- Schema v14 · owned by commands/: what the nightly plan pre-warm needs (contracts §5).
--
-- Every plan request is counted by its cache key, with the normalised request behind the
-- key, so the most-asked keys can be regenerated when their cached plan is missing or about
-- to expire. A row outlives its cache row on purpose: a popular key whose plan expired is
-- exactly what the pre-warm refills.
CREATE TABLE plan_requests (
  key           TEXT PRIMARY KEY,          -- the plan cache key (cache.key)
  model         TEXT NOT NULL,             -- the fast-tier model the key was made for
  request_json  JSONB NOT NULL,            -- {subject, topic, level, intent}, normalised
  asks          BIGINT NOT NULL DEFAULT 0, -- plan requests with this key, hits included
  last_asked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_plan_requests_asks ON plan_requests (model, asks DESC);
-- The cache purge deletes by expiry.
CREATE INDEX idx_cache_ttl ON cache (ttl_at) WHERE ttl_at IS NOT NULL;
