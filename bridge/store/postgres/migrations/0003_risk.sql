-- Risk decisions kept: payments the rules refused (nothing else of them is stored) and payments
-- they let through with flags, by time.
CREATE TABLE risk_decisions (
    id      text COLLATE "C" PRIMARY KEY,
    at      timestamptz NOT NULL,
    partner text NOT NULL,
    record  bytea NOT NULL
);
CREATE INDEX risk_decisions_at ON risk_decisions (at, id);
