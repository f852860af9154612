-- What a rollout's driver asks at every tick, answered from indexes that do not grow with the
-- fleet's history: a host's outcomes of one level (is it on its way?), and only the failed
-- outcomes and unclean reboots (the hard gates), which are rare.
CREATE INDEX outcomes_by_host_level ON outcomes (host_id, level);
CREATE INDEX outcomes_failed ON outcomes (level, at_ms) WHERE result NOT IN ('applied', 'forced');
CREATE INDEX health_unclean ON health (at_ms) WHERE unclean_reboot = 1;

-- The hosts whose health a running rollout's gates read, asked to report it at every check-in
-- (see `Desired::report_health`); everyone else reports only when something changed.
ALTER TABLE rollout_hosts ADD COLUMN sampled BIGINT NOT NULL DEFAULT 0;
CREATE INDEX rollout_hosts_sampled ON rollout_hosts (rollout_id) WHERE sampled = 1;
