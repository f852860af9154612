-- The fleet's schema. Portable between SQLite and PostgreSQL: TEXT and BIGINT only (plus the
-- module bytes, whose type the server substitutes for BYTES_TYPE: BLOB or BYTEA), ids made by the
-- server, no autoincrement. Times are milliseconds since the epoch unless named otherwise.

-- Public keys of publishers whose signatures the fleet trusts (hex of the Ed25519 key).
CREATE TABLE publisher_keys (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    added_ms BIGINT NOT NULL
);

-- Operator and enroll tokens: only the SHA-256 of the secret is kept.
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

-- A stream per kernel build. default_level: the level a selector-less assignment gave the
-- whole stream, which hosts arriving later (enrolling, or rebooting into this kernel) get.
CREATE TABLE streams (
    stream TEXT PRIMARY KEY,
    kernel_release TEXT NOT NULL,
    build_id TEXT NOT NULL,
    default_level BIGINT,
    created_ms BIGINT NOT NULL
);

-- Hosts. labels: the JSON object as enrolled (host_labels holds the same, indexed).
-- desired: the assigned level; level, taint, kernel_errors, patches: the last report.
-- last_seen_ms is written in batches (see lastseen.rs).
CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    labels TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    kernel_release TEXT NOT NULL,
    build_id TEXT NOT NULL,
    stream TEXT NOT NULL REFERENCES streams (stream),
    desired BIGINT,
    level BIGINT,
    taint BIGINT NOT NULL,
    kernel_errors BIGINT NOT NULL,
    patches TEXT NOT NULL,
    last_outcome TEXT,
    enrolled_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX hosts_by_stream ON hosts (stream);

CREATE TABLE host_labels (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (host_id, name)
);
CREATE INDEX host_labels_by_value ON host_labels (name, value);

-- Module files, content-addressed, in the database so that every replica serves them.
CREATE TABLE modules (
    sha256 TEXT PRIMARY KEY,
    bytes BYTES_TYPE NOT NULL,
    size BIGINT NOT NULL,
    stored_ms BIGINT NOT NULL
);

-- Published levels. signed: the SignedLevel JSON exactly as the publisher sent it.
-- The keys make concurrent publishes safe: one level number and one version per stream.
CREATE TABLE levels (
    stream TEXT NOT NULL REFERENCES streams (stream),
    level BIGINT NOT NULL,
    version BIGINT NOT NULL,
    module_name TEXT NOT NULL,
    module_sha256 TEXT NOT NULL REFERENCES modules (sha256),
    manifest TEXT NOT NULL,
    patches TEXT NOT NULL,
    signed TEXT NOT NULL,
    expires BIGINT NOT NULL,
    published_ms BIGINT NOT NULL,
    published_by TEXT NOT NULL,
    PRIMARY KEY (stream, level),
    UNIQUE (stream, version)
);

-- Outcomes agents reported, once each: a resent report hits the key and is ignored.
CREATE TABLE outcomes (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    id TEXT NOT NULL,
    level BIGINT,
    result TEXT NOT NULL,
    outcome TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (host_id, id)
);

-- Every operator action, refused ones included.
CREATE TABLE audit (
    id TEXT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    who TEXT NOT NULL,
    what TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);
