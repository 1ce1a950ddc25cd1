-- riegel's PostgreSQL schema, version 2 (the record format of
-- store::SCHEMA_VERSION 2; sled's schema 1 never existed here).
-- Records are JSON (jsonb) as the sled backend writes them; a column of
-- its own exists wherever a lookup, a uniqueness rule or an atomic
-- statement needs one.

CREATE TABLE users (
    id           bigserial PRIMARY KEY,
    -- login_key(username): lower-cased and trimmed.
    username_key text NOT NULL CONSTRAINT users_username_unique UNIQUE,
    -- login_key(email), NULL without an address.
    email_key    text CONSTRAINT users_email_unique UNIQUE,
    data         jsonb NOT NULL
);

CREATE TABLE sessions (
    uid        bigint NOT NULL,
    sid        bytea NOT NULL,
    -- The record; its last_seen is the column's (touch_session moves only
    -- the column).
    data       jsonb NOT NULL,
    expires_at bigint NOT NULL,
    last_seen  bigint NOT NULL,
    PRIMARY KEY (uid, sid)
);

CREATE TABLE counters (
    -- CounterKey::to_bytes
    key          bytea PRIMARY KEY,
    data         jsonb NOT NULL,
    banned_until bigint NOT NULL DEFAULT 0
);

CREATE TABLE tokens (
    -- Hex SHA-256 of the token.
    hash text PRIMARY KEY,
    -- TokenKind as u8.
    kind smallint NOT NULL,
    uid  bigint NOT NULL
);
CREATE INDEX tokens_uid ON tokens (uid);

CREATE TABLE mail (
    id              bigserial PRIMARY KEY,
    sealed          bytea NOT NULL,
    to_domain       text NOT NULL,
    accepted_at     bigint NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at bigint NOT NULL
);
CREATE INDEX mail_due ON mail (next_attempt_at, id);
