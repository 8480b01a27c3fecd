-- The backend's outbox, as vitalflow's outbox source expects it.
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY,
    event_type text NOT NULL,   -- 'health.samples.batch' | 'domain.changes' | anything else (ignored)
    payload jsonb NOT NULL,     -- the HTTP API's body
    created_at timestamptz NOT NULL DEFAULT now()
);
