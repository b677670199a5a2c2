-- The tables `processmanager mirror` keeps, created when missing. Every
-- row carries the `source` (one daemon) it came from, so that many
-- daemons share the tables and a question across all of them is one query.

-- The layout of these tables, one row (`MIRROR_SCHEMA_VERSION` in
-- database.rs): a mirror brings older tables up to its own layout, and
-- stops at tables of a later one.
CREATE TABLE IF NOT EXISTS pm_mirror_schema (
    version integer NOT NULL
);

CREATE TABLE IF NOT EXISTS pm_mirror_offsets (
    source text PRIMARY KEY,
    -- The feed position applied: every item up to it is in the tables.
    last_seq bigint NOT NULL,
    -- When the last item applied was received by the daemon.
    last_received_at timestamptz,
    updated_at timestamptz NOT NULL,
    -- The id of the daemon's store the rows came from (layout 2).
    store_id text,
    -- A `mirror --reseed` began and has not finished (layout 2).
    reseeding boolean NOT NULL DEFAULT false
);
-- Tables of layout 1 get the columns layout 2 added.
ALTER TABLE pm_mirror_offsets ADD COLUMN IF NOT EXISTS store_id text;
ALTER TABLE pm_mirror_offsets ADD COLUMN IF NOT EXISTS reseeding boolean NOT NULL DEFAULT false;

CREATE TABLE IF NOT EXISTS pm_processes (
    source text NOT NULL,
    id text NOT NULL,
    name text,
    process_type text,
    correlation_id text,
    status text NOT NULL,
    progress jsonb,
    error jsonb,
    attributes jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    updated_at timestamptz NOT NULL,
    finished_at timestamptz,
    duration_ms bigint,
    stalled_since timestamptz,
    deadline timestamptz,
    event_count bigint NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE INDEX IF NOT EXISTS pm_processes_status_finished ON pm_processes (status, finished_at);
CREATE INDEX IF NOT EXISTS pm_processes_type_status ON pm_processes (process_type, status);
CREATE INDEX IF NOT EXISTS pm_processes_correlation ON pm_processes (correlation_id);
CREATE INDEX IF NOT EXISTS pm_processes_finished ON pm_processes (finished_at);
CREATE INDEX IF NOT EXISTS pm_processes_source_status ON pm_processes (source, status);
CREATE INDEX IF NOT EXISTS pm_processes_stalled ON pm_processes (stalled_since)
    WHERE stalled_since IS NOT NULL;

CREATE TABLE IF NOT EXISTS pm_tasks (
    source text NOT NULL,
    process_id text NOT NULL,
    id text NOT NULL,
    -- Order of first sight within the process, from 0.
    position integer NOT NULL,
    name text,
    status text NOT NULL,
    attempt integer NOT NULL,
    progress jsonb,
    error jsonb,
    attributes jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    started_at timestamptz,
    updated_at timestamptz NOT NULL,
    finished_at timestamptz,
    stalled_since timestamptz,
    attempts jsonb NOT NULL,
    PRIMARY KEY (source, process_id, id),
    FOREIGN KEY (source, process_id) REFERENCES pm_processes (source, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS pm_tasks_status ON pm_tasks (status);

CREATE TABLE IF NOT EXISTS pm_events (
    source text NOT NULL,
    seq bigint NOT NULL,
    process_id text NOT NULL,
    task_id text,
    type text NOT NULL,
    event_id text,
    result text NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    process_status text NOT NULL,
    task_status text,
    -- The feed item as the daemon served it.
    item jsonb NOT NULL,
    PRIMARY KEY (source, seq)
);
CREATE INDEX IF NOT EXISTS pm_events_process ON pm_events (source, process_id, seq);
CREATE INDEX IF NOT EXISTS pm_events_type_occurred ON pm_events (type, occurred_at);
