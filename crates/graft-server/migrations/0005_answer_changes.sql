-- Which hosts' check-in answers a write changed, so that replicas forget only those: a write
-- that changes some hosts' answers (a rollout moving or sampling them, a revocation, a host
-- booting another kernel) bumps the generation and stamps those hosts with the new value; a
-- write that may change anyone's (a publish, an assignment, a rollback to a re-signed level)
-- also sets `flushed` to it, and replicas that see it move empty their caches.
ALTER TABLE hosts ADD COLUMN answer_gen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE generation ADD COLUMN flushed BIGINT NOT NULL DEFAULT 0;
CREATE INDEX hosts_by_answer_gen ON hosts (answer_gen);
