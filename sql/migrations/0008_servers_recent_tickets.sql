-- The nonces of the balancer tickets a server's clients said hello with lately, written
-- with its client count in each heartbeat: the balancer adds to that count exactly the
-- clients it sent there that the count does not include yet.
ALTER TABLE servers ADD COLUMN recent_tickets text[] NOT NULL DEFAULT '{}';
