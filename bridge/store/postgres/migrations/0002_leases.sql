-- Leases: work done once among the nodes sharing this database (the resolver, webhook
-- deliveries, quote retention, settlement runs) is led by the node holding its lease. Times are
-- the database's clock, so the nodes' clocks need not agree.
CREATE TABLE leases (
    name    text COLLATE "C" PRIMARY KEY,
    holder  text NOT NULL,
    until   timestamptz NOT NULL
);
