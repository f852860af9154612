-- Staged rollouts. A rollout's row is the whole of its state, changed by whichever replica
-- drives it under a compare-and-set on revision, so that replicas never drive one twice.
-- waves: the plan as JSON (see graft_protocol::rollout::WaveView); decisions: the gate
-- decisions as JSON, oldest first; excused: hosts an operator's resume after a halt accepted
-- (the hard gates no longer count them).
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    stream TEXT NOT NULL REFERENCES streams (stream),
    level BIGINT NOT NULL,
    from_level BIGINT,
    selector TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    wave BIGINT NOT NULL,
    waves TEXT NOT NULL,
    bake_ms BIGINT NOT NULL,
    max_parallel BIGINT,
    lost_after_ms BIGINT NOT NULL,
    auto_rollback BIGINT NOT NULL,
    hosts BIGINT NOT NULL,
    decisions TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    excused TEXT NOT NULL,
    live TEXT
);
CREATE INDEX rollouts_by_state ON rollouts (state);
-- live: the stream while the rollout is not over, NULL after. One stream has at most one
-- rollout that is not over: unique even against a concurrent start on another replica
-- (NULLs are distinct in a unique index, on SQLite and PostgreSQL alike).
CREATE UNIQUE INDEX rollouts_one_live_per_stream ON rollouts (live);

-- The hosts a rollout selected when it started, in the order it moves them (ord: a hash of
-- the rollout and host ids, so each rollout draws its own order). wave: when it was moved
-- (NULL: not yet); previous: its desired level before.
CREATE TABLE rollout_hosts (
    rollout_id TEXT NOT NULL REFERENCES rollouts (id),
    host_id TEXT NOT NULL REFERENCES hosts (id),
    ord TEXT NOT NULL,
    previous BIGINT,
    wave BIGINT,
    moved_ms BIGINT,
    PRIMARY KEY (rollout_id, host_id)
);
CREATE INDEX rollout_hosts_by_rank ON rollout_hosts (rollout_id, ord);

-- What hosts observed per interval (HealthSample), kept for the gates: one row per report.
CREATE TABLE health (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    at_ms BIGINT NOT NULL,
    interval_ms BIGINT NOT NULL,
    level BIGINT,
    patching BIGINT NOT NULL,
    unclean_reboot BIGINT NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (host_id, at_ms)
);
CREATE INDEX health_by_time ON health (at_ms);
