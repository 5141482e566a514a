-- The automation estate: the automations a customer already runs (HubSpot workflows,
-- Salesforce flows, Zapier zaps, Make scenarios), imported from their exports in one
-- normalised form (docs/estate.md), and the rows an import refused, with the reason.

CREATE SCHEMA IF NOT EXISTS estate;

-- One row per import of a file; the same file (same content and format) imported again is
-- the same import_id and replaces its rows, so re-importing changes nothing.
CREATE TABLE estate.imports (
    import_id    VARCHAR PRIMARY KEY,    -- sha256 of the format and the file's bytes
    file_name    VARCHAR NOT NULL,
    format       VARCHAR NOT NULL,       -- hubspot, salesforce, zapier, csv
    rows_read    BIGINT NOT NULL,
    loaded       BIGINT NOT NULL,
    refused      BIGINT NOT NULL,
    imported_at  TIMESTAMPTZ NOT NULL
);

-- The normalised inventory: one row per automation, the newest import of it wins.
CREATE TABLE estate.automations (
    automation_id  VARCHAR PRIMARY KEY,  -- platform:external_id
    platform       VARCHAR NOT NULL,     -- hubspot, salesforce, zapier, make, other
    external_id    VARCHAR NOT NULL,     -- the id the platform gives it
    name           VARCHAR NOT NULL,
    trigger        VARCHAR,              -- what starts it, as the platform says it
    object_type    VARCHAR,              -- Revorch object type it works on, when known
    fields_written VARCHAR[] NOT NULL,   -- properties it sets (Revorch or CRM names)
    enabled        BOOLEAN NOT NULL,
    source_key     VARCHAR NOT NULL,     -- the change log `source` its changes carry
    import_id      VARCHAR NOT NULL,
    row_number     BIGINT NOT NULL       -- where in the file (1 = first record)
);

-- Rows an import could not take, kept whole with the reason (never silently dropped).
CREATE TABLE estate.import_refusals (
    import_id    VARCHAR NOT NULL,
    row_number   BIGINT NOT NULL,
    reason       VARCHAR NOT NULL,       -- see docs/estate.md for the list
    detail       VARCHAR,
    raw          VARCHAR NOT NULL
);
