-- What a rollout's driver counts at every tick, read from indexes of the hosts it is about
-- rather than by visiting every host it moved (a million rows by a large fleet's last wave):
-- the hosts not on their desired level yet (few once a wave settles), the hosts with kernel
-- errors (rare), and the hosts by their last check-in (the silent ones are its first entries).
-- A rollout's moved hosts are counted from its own rows alone.
CREATE INDEX hosts_unsettled ON hosts (desired) WHERE level IS DISTINCT FROM desired;
CREATE INDEX hosts_with_kernel_errors ON hosts (level) WHERE kernel_errors > 0;
CREATE INDEX hosts_by_last_seen ON hosts (last_seen_ms);
CREATE INDEX rollout_hosts_moved ON rollout_hosts (rollout_id, wave);
