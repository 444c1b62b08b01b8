-- The seed's tables (systemprompt-oauth), only what the foreign keys need of
-- users and oauth_clients. Idempotent: safe to apply on every start.

CREATE TABLE IF NOT EXISTS users (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    email       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS oauth_clients (
    client_id           TEXT PRIMARY KEY,
    client_secret_hash  TEXT,
    client_name         TEXT,
    redirect_uris       TEXT[],
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS oauth_refresh_tokens (
    token_id     TEXT PRIMARY KEY,
    client_id    TEXT NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    scope        TEXT NOT NULL,
    resource     TEXT,
    expires_at   TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    family_id    TEXT NOT NULL,
    consumed_at  TIMESTAMPTZ,
    CONSTRAINT oauth_refresh_tokens_token_id_not_empty CHECK (token_id <> ''),
    CONSTRAINT oauth_refresh_tokens_family_id_not_empty CHECK (family_id <> '')
);

CREATE INDEX IF NOT EXISTS idx_oauth_refresh_tokens_family_id ON oauth_refresh_tokens(family_id);
CREATE INDEX IF NOT EXISTS idx_oauth_refresh_tokens_client_id ON oauth_refresh_tokens(client_id);
CREATE INDEX IF NOT EXISTS idx_oauth_refresh_tokens_user_id ON oauth_refresh_tokens(user_id);
CREATE INDEX IF NOT EXISTS idx_oauth_refresh_tokens_expires_at ON oauth_refresh_tokens(expires_at);

CREATE TABLE IF NOT EXISTS oauth_auth_codes (
    code                   TEXT PRIMARY KEY,
    client_id              TEXT NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
    user_id                TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    redirect_uri           TEXT NOT NULL,
    scope                  TEXT NOT NULL,
    expires_at             TIMESTAMPTZ NOT NULL,
    used_at                TIMESTAMPTZ,
    code_challenge         TEXT,
    code_challenge_method  TEXT,
    resource               TEXT,
    refresh_token_id       TEXT REFERENCES oauth_refresh_tokens(token_id) ON DELETE SET NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT oauth_auth_codes_code_not_empty CHECK (code <> ''),
    CONSTRAINT oauth_auth_codes_challenge_method_check
        CHECK (code_challenge_method IN ('S256', 'plain') OR code_challenge_method IS NULL)
);

CREATE INDEX IF NOT EXISTS idx_oauth_auth_codes_client_id ON oauth_auth_codes(client_id);
CREATE INDEX IF NOT EXISTS idx_oauth_auth_codes_user_id ON oauth_auth_codes(user_id);
CREATE INDEX IF NOT EXISTS idx_oauth_auth_codes_expires_at ON oauth_auth_codes(expires_at);
CREATE INDEX IF NOT EXISTS idx_oauth_auth_codes_refresh_token_id ON oauth_auth_codes(refresh_token_id);

-- Harness-only tables: prefixed harness_, never read by a target.

CREATE TABLE IF NOT EXISTS harness_ledger (
    run_id      TEXT NOT NULL,
    code_index  BIGINT NOT NULL,
    code_hash   TEXT NOT NULL,
    winner      TEXT NOT NULL,
    won_at      TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    started_ns  BIGINT,
    finished_ns BIGINT
);
CREATE INDEX IF NOT EXISTS idx_harness_ledger_run_code ON harness_ledger(run_id, code_index);

-- Every attempt of a Locust run (won, lost, error), flushed in batches by each Locust process;
-- the ledger above is written at once, win by win.
CREATE TABLE IF NOT EXISTS harness_ledger_attempts (
    run_id      TEXT NOT NULL,
    worker      TEXT NOT NULL,
    racer       TEXT NOT NULL,
    code_index  BIGINT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('won', 'lost', 'error')),
    started_ns  BIGINT NOT NULL,
    finished_ns BIGINT NOT NULL,
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS idx_harness_ledger_attempts_run ON harness_ledger_attempts(run_id);

-- One row per Locust process and run: 'started' at its test_start, 'finished' once its attempts
-- are all flushed, so the checker knows when every worker has reported.
CREATE TABLE IF NOT EXISTS harness_ledger_workers (
    run_id      TEXT NOT NULL,
    worker      TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('started', 'finished')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, worker)
);
