-- One counter that every write changing what a host's check-in answers bumps (assignments,
-- publishing, revocations, a host moving to another kernel), in the same transaction. Replicas
-- read it to know when the answers they keep in memory are stale.
CREATE TABLE generation (
    id BIGINT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO generation (id, value) VALUES (1, 0);
