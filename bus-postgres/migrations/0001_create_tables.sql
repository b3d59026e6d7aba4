-- Messages committed by units of work and not yet handed to the transport. `{outbox}`,
-- `{inbox}` and `{sagas}` are replaced by the storage's (prefixed, schema-qualified) names.
CREATE TABLE IF NOT EXISTS {outbox} (
    id          BIGSERIAL PRIMARY KEY,
    destination TEXT        NOT NULL,
    headers     JSONB       NOT NULL,
    body        BYTEA       NOT NULL,
    deliver_at  TIMESTAMPTZ NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- Messages each endpoint handled, committed with the handler's work.
CREATE TABLE IF NOT EXISTS {inbox} (
    endpoint   TEXT        NOT NULL,
    message_id TEXT        NOT NULL,
    handled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint, message_id)
);

-- Running saga instances; `version` guards concurrent changes (optimistic concurrency).
CREATE TABLE IF NOT EXISTS {sagas} (
    saga       TEXT        NOT NULL,
    id         TEXT        NOT NULL,
    state      JSONB       NOT NULL,
    version    BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (saga, id)
);

-- Purging old inbox records scans by age.
CREATE INDEX IF NOT EXISTS {inbox_handled_at_index} ON {inbox} (handled_at);
