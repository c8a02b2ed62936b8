-- Tokens revoked at logout, keyed on their jti (or user id and iat for tokens without one).
-- A row is purged once the token would have expired anyway.
CREATE TABLE IF NOT EXISTS authd_revoked_token (
    token_key varchar(80) NOT NULL PRIMARY KEY,
    user_id bigint NOT NULL,
    expires_at timestamp with time zone NOT NULL
);
CREATE INDEX IF NOT EXISTS authd_revoked_token_expires_at ON authd_revoked_token (expires_at);

-- Failed-login counters per email ('e') and per client address ('i'), one fixed window each,
-- in the database so that several instances share them.
CREATE TABLE IF NOT EXISTS authd_login_throttle (
    scope char(1) NOT NULL,
    key varchar(320) NOT NULL,
    window_start timestamp with time zone NOT NULL,
    failures integer NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS authd_login_throttle_window_start ON authd_login_throttle (window_start);
