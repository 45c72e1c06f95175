-- The PostgreSQL store's first schema.
--
-- Every record is kept whole in `record`, in the store's binary codec (as sled keeps it); the
-- columns beside it carry what keys, constraints and indexes need. Ids are compared with the "C"
-- collation: byte order, as sled's keys sort, whatever the database's locale — bridge ids are
-- time-ordered, so id order is creation order.
--
-- Single use is a constraint, never a read before a write: a partner's request id, a quote held
-- by a payment, an order held by a payment, an acquirer's refund id.

-- Quotes: immutable once written; the unused ones are purged after they expire.
CREATE TABLE quotes (
    id          text COLLATE "C" PRIMARY KEY,
    partner     text COLLATE "C" NOT NULL,
    expires_at  timestamptz NOT NULL,
    record      bytea NOT NULL
);

-- Payments, with their claims on the row itself: a claim is taken by the insert that creates the
-- payment and let go by the update that releases it, so there is no claim without its payment.
-- Updates that change no indexed column can stay on their page (fillfactor leaves room).
CREATE TABLE payments (
    id           text COLLATE "C" PRIMARY KEY,
    partner      text COLLATE "C" NOT NULL,
    request_id   text COLLATE "C" NOT NULL,
    -- Tells a replay (same content) from a reuse of the request id (other content).
    request_hash text NOT NULL,
    quote_id     text COLLATE "C" NOT NULL,
    -- The quote while this payment holds it; NULL once released (the quote may be paid again).
    -- A held quote cannot be purged (the reference).
    quote_claim  text COLLATE "C" REFERENCES quotes (id),
    -- The order while this payment holds it; NULL once the payment failed or was cancelled.
    order_claim  text COLLATE "C",
    state        text NOT NULL,
    rev          bigint NOT NULL CHECK (rev >= 0),
    created_at   timestamptz NOT NULL,
    record       bytea NOT NULL,
    CONSTRAINT payments_request UNIQUE (partner, request_id),
    CONSTRAINT payments_quote_claim UNIQUE (quote_claim),
    CONSTRAINT payments_order_claim UNIQUE (order_claim)
) WITH (fillfactor = 80);

-- payments_made: a window by creation time costs the window.
CREATE INDEX payments_made ON payments (created_at, id);

-- The resolver's work: one item per payment not final yet (or reversal not confirmed).
CREATE TABLE work (
    payment_id  text COLLATE "C" PRIMARY KEY REFERENCES payments (id),
    due         timestamptz NOT NULL,
    record      bytea NOT NULL
);

CREATE TABLE journal (
    seq         bigserial PRIMARY KEY,
    payment_id  text COLLATE "C" NOT NULL REFERENCES payments (id),
    kind        text NOT NULL,
    at          timestamptz NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX journal_of ON journal (payment_id, seq);

-- Running totals per currency and account, each spread over shard rows so that concurrent
-- entries do not all queue on one row; a total is the sum of its shards.
CREATE TABLE account_totals (
    currency    text COLLATE "C" NOT NULL,
    account     text COLLATE "C" NOT NULL,
    shard       smallint NOT NULL CHECK (shard >= 0),
    total       numeric(39, 0) NOT NULL,
    PRIMARY KEY (currency, account, shard)
);

CREATE TABLE refunds (
    id                 text COLLATE "C" PRIMARY KEY,
    payment_id         text COLLATE "C" NOT NULL REFERENCES payments (id),
    acquirer           text COLLATE "C" NOT NULL,
    acquirer_refund_id text COLLATE "C" NOT NULL,
    created_at         timestamptz NOT NULL,
    record             bytea NOT NULL,
    CONSTRAINT refunds_acquirer_id UNIQUE (acquirer, acquirer_refund_id)
);
CREATE INDEX refunds_of ON refunds (payment_id, id);
CREATE INDEX refunds_made ON refunds (created_at, id);

-- Webhook events waiting to be delivered. `seq` is taken at insert (the event's identity for
-- the rest of the code); `tx` is the writing transaction's id, which readers follow in commit
-- order (see outbox_after in mod.rs).
CREATE TABLE outbox (
    seq         bigserial PRIMARY KEY,
    tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id    text COLLATE "C" NOT NULL,
    payment_id  text COLLATE "C" NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX outbox_commit_order ON outbox (tx, seq);

-- Delivered events: the header only (the body is null in `record`).
CREATE TABLE delivered (
    seq          bigint PRIMARY KEY,
    event_id     text COLLATE "C" NOT NULL,
    payment_id   text COLLATE "C" NOT NULL,
    delivered_at timestamptz NOT NULL,
    record       bytea NOT NULL
);

-- Events given up on, waiting for an operator; `tx` is where the event stood in the outbox, so
-- one put back keeps its place among its payment's events.
CREATE TABLE parked (
    seq         bigint PRIMARY KEY,
    tx          xid8 NOT NULL,
    event_id    text COLLATE "C" NOT NULL UNIQUE,
    payment_id  text COLLATE "C" NOT NULL,
    record      bytea NOT NULL
);

-- One row: bumped whenever the outbox changes behind readers' cursors (a replay, a purge of
-- parked events), in the transaction that changes it, so every node sees it.
CREATE TABLE outbox_epoch (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch       bigint NOT NULL
);
INSERT INTO outbox_epoch (epoch) VALUES (0);

-- Admin settings (spreads, rates set by hand) and the audit chain's head (`audit/head`).
CREATE TABLE settings (
    key         text COLLATE "C" PRIMARY KEY,
    value       bytea NOT NULL
);

-- The audit log: one chain, 1, 2, 3, … (appended under an advisory lock).
CREATE TABLE audit (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,
    hash        text NOT NULL,
    record      bytea NOT NULL
);
