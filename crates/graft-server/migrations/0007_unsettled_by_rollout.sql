-- A host names the rollout that last moved it, so that a rollout's hosts not yet on their
-- desired level are counted in one partial index, without reading a row: counting them
-- through the rollout's rows looked up every one (a million-host rollout's last wave had
-- 670,000 unsettled hosts, and the count took 12 s of a 5 s tick). The rollout's own rows
-- stay the record of what it moved; this column only finds them fast.
ALTER TABLE hosts ADD COLUMN rollout_id TEXT;
-- Each moved host's latest rollout, found by host: without an index by host, each host's
-- lookup would read every rollout row.
CREATE INDEX rollout_hosts_by_host ON rollout_hosts (host_id);
UPDATE hosts SET rollout_id = (SELECT rh.rollout_id FROM rollout_hosts rh
    JOIN rollouts r ON r.id = rh.rollout_id
    WHERE rh.host_id = hosts.id AND rh.wave IS NOT NULL
    ORDER BY r.created_ms DESC, r.id DESC LIMIT 1)
WHERE id IN (SELECT host_id FROM rollout_hosts WHERE wave IS NOT NULL);
DROP INDEX rollout_hosts_by_host;
CREATE INDEX hosts_unsettled_by_rollout ON hosts (rollout_id, level, desired)
    WHERE level IS DISTINCT FROM desired;
-- Migration 6's index of unsettled hosts by desired level counted them through the rollout's
-- rows; nothing reads it now, and every move and apply would still update it.
DROP INDEX hosts_unsettled;
