-- Revorch state store, version 1: the CRM change log and the current state built from it.
-- Every change ever received is kept in change_log; the current-state tables are derived
-- from it and can be rebuilt from it at any time.

-- One row per batch file taken from the landing zone (a re-delivered file gets a new row).
CREATE TABLE landing_batches (
    batch_id     VARCHAR NOT NULL,       -- file name without .ndjson
    file_bytes   BIGINT NOT NULL,        -- size of the file as received
    load_id      BIGINT NOT NULL,        -- the ingestion that took it
    received     BIGINT NOT NULL,        -- non-blank lines in the file
    loaded       BIGINT NOT NULL,        -- new events written to change_log
    duplicates   BIGINT NOT NULL,        -- events (or malformed lines) already seen
    quarantined  BIGINT NOT NULL,        -- new malformed lines written to quarantine
    ingested_at  TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR                 -- Dagster run id of the ingestion
);

-- Append-only: every valid change event, exactly once per event_id.
CREATE TABLE change_log (
    event_id     VARCHAR NOT NULL,       -- globally unique; sources prefix their own ids
    load_id      BIGINT NOT NULL,
    batch_id     VARCHAR NOT NULL,
    source       VARCHAR NOT NULL,
    object_type  VARCHAR NOT NULL,       -- company, contact, deal, activity, ticket, subscription, owner
    object_id    VARCHAR NOT NULL,
    op           VARCHAR NOT NULL,       -- upsert or delete
    occurred_at  TIMESTAMPTZ NOT NULL,   -- when the change happened at the source
    ingested_at  TIMESTAMPTZ NOT NULL,   -- when Revorch learned of it
    properties   JSON NOT NULL           -- only the fields this change set (null clears a field)
);

-- Malformed input, kept whole with the reason it was refused. Never silently dropped.
CREATE TABLE quarantine (
    raw_md5        VARCHAR NOT NULL,     -- identity of the raw line: the same line is kept once
    load_id        BIGINT NOT NULL,
    batch_id       VARCHAR NOT NULL,
    event_id       VARCHAR,              -- when it could be read
    reason         VARCHAR NOT NULL,     -- see docs/landing_zone.md for the list
    detail         VARCHAR,
    raw            VARCHAR NOT NULL,     -- the line exactly as received (invalid UTF-8 escaped)
    quarantined_at TIMESTAMPTZ NOT NULL
);

-- How far each derived table has caught up with change_log (by load_id).
CREATE TABLE state_watermarks (
    name     VARCHAR PRIMARY KEY,
    load_id  BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Current state: one row per CRM record, the newest value of each field by occurred_at.
-- Columns starting with "_" are bookkeeping; every other column is a CRM property and is
-- type-checked on ingestion against the column type declared here.

CREATE TABLE owners (
    id VARCHAR NOT NULL,
    email VARCHAR, first_name VARCHAR, last_name VARCHAR,
    role VARCHAR,                          -- sdr, ae, csm, manager
    team VARCHAR,
    is_active BOOLEAN,
    created_at TIMESTAMPTZ,
    _first_seen_at TIMESTAMPTZ, _last_changed_at TIMESTAMPTZ, _changes BIGINT, _deleted BOOLEAN
);

CREATE TABLE companies (
    id VARCHAR NOT NULL,
    name VARCHAR, domain VARCHAR, industry VARCHAR,
    employees BIGINT, annual_revenue DOUBLE, country VARCHAR,
    tier VARCHAR,                          -- strategic, enterprise, mid_market, smb
    owner_id VARCHAR,
    created_at TIMESTAMPTZ,
    _first_seen_at TIMESTAMPTZ, _last_changed_at TIMESTAMPTZ, _changes BIGINT, _deleted BOOLEAN
);

CREATE TABLE contacts (
    id VARCHAR NOT NULL,
    company_id VARCHAR, owner_id VARCHAR,
    email VARCHAR, first_name VARCHAR, last_name VARCHAR, job_title VARCHAR, phone VARCHAR,
    lead_source VARCHAR,                   -- organic_search, paid_ads, webinar, referral, outbound, event, partner
    lifecycle_stage VARCHAR,               -- lead, marketingqualifiedlead, salesqualifiedlead, opportunity, customer, other
    lead_status VARCHAR,                   -- new, attempted_to_contact, connected, open_deal, unqualified, bad_timing
    created_at TIMESTAMPTZ,
    _first_seen_at TIMESTAMPTZ, _last_changed_at TIMESTAMPTZ, _changes BIGINT, _deleted BOOLEAN
);

CREATE TABLE deals (
    id VARCHAR NOT NULL,
    company_id VARCHAR, contact_id VARCHAR, owner_id VARCHAR,
    name VARCHAR,
    deal_type VARCHAR,                     -- new_business, renewal, expansion
    stage VARCHAR,                         -- appointmentscheduled ... contractsent, closedwon, closedlost
    amount DOUBLE, currency VARCHAR,
    close_date DATE,
    closed_at TIMESTAMPTZ,
    lost_reason VARCHAR,
    created_at TIMESTAMPTZ,
    _first_seen_at TIMESTAMPTZ, _last_changed_at TIMESTAMPTZ, _changes BIGINT, _deleted BOOLEAN
);

CREATE TABLE activities (
    id VARCHAR NOT NULL,
    activity_type VARCHAR,                 -- email_sent, email_opened, email_replied, meeting, call, web_visit, form_fill
    contact_id VARCHAR, company_id VARCHAR, deal_id VARCHAR, owner_id VARCHAR,
    subject VARCHAR, body VARCHAR, url VARCHAR,
    activity_at TIMESTAMPTZ,
    _first_seen_at TIMESTAMPTZ, _last_changed_at TIMESTAMPTZ, _changes BIGINT, _deleted BOOLEAN
);

CREATE TABLE tickets (
    id VARCHAR NOT NULL,
    company_id VARCHAR, contact_id VARCHAR, owner_id VARCHAR,
    subject VARCHAR, body VARCHAR, category VARCHAR,
    priority VARCHAR,                      -- low, medium, high, urgent
    status VARCHAR,                        -- new, open, waiting, closed
    csat BIGINT,                           -- 1..5 after close
    created_at TIMESTAMPTZ, closed_at TIMESTAMPTZ,
    _first_seen_at TIMESTAMPTZ, _last_changed_at TIMESTAMPTZ, _changes BIGINT, _deleted BOOLEAN
);

CREATE TABLE subscriptions (
    id VARCHAR NOT NULL,
    company_id VARCHAR, deal_id VARCHAR,
    plan VARCHAR,
    status VARCHAR,                        -- active, renewed, churned
    start_date DATE, end_date DATE,
    arr DOUBLE, seats BIGINT, seats_active BIGINT,
    renewal_of VARCHAR,                    -- subscription this one renews
    created_at TIMESTAMPTZ,
    _first_seen_at TIMESTAMPTZ, _last_changed_at TIMESTAMPTZ, _changes BIGINT, _deleted BOOLEAN
);

-- Which current-state table holds each object type.
CREATE TABLE object_types (
    object_type VARCHAR PRIMARY KEY,
    table_name  VARCHAR NOT NULL
);
INSERT INTO object_types VALUES
    ('owner', 'owners'), ('company', 'companies'), ('contact', 'contacts'), ('deal', 'deals'),
    ('activity', 'activities'), ('ticket', 'tickets'), ('subscription', 'subscriptions');

-- Field-level history: one row per property set by a change, for "what did we know when".
CREATE VIEW property_history AS
SELECT c.object_type, c.object_id, p.key AS property, p.value ->> '$' AS value,
       c.occurred_at, c.ingested_at, c.event_id, c.source
FROM change_log AS c, json_each(c.properties) AS p;

-- The record's properties as they stood at `as_of` (by the time changes happened).
CREATE MACRO record_as_of(otype, oid, as_of) AS TABLE
SELECT property, arg_max(value, (occurred_at, event_id)) AS value, max(occurred_at) AS changed_at
FROM property_history
WHERE object_type = otype AND object_id = oid AND occurred_at <= as_of
GROUP BY property ORDER BY property;

-- The record's properties as Revorch knew them at `as_of` (only changes received by then).
CREATE MACRO record_known_at(otype, oid, as_of) AS TABLE
SELECT property, arg_max(value, (occurred_at, event_id)) AS value, max(occurred_at) AS changed_at
FROM property_history
WHERE object_type = otype AND object_id = oid AND ingested_at <= as_of
GROUP BY property ORDER BY property;
