-- The audit trail of what decided when (issue 11): a row each time an engine
-- puts thresholds, rules and models in force, at start-up or on a live config
-- change, with who changed them (the file's thresholds.changed_by), which
-- engine, and when. threshold_sets holds one row per distinct content, so a
-- revert reuses its old version; this table shows the revert and who made it.
CREATE TABLE policy_changes (
    id                bigserial   PRIMARY KEY,
    threshold_version integer     NOT NULL REFERENCES threshold_sets (version),
    changed_by        text        NOT NULL,
    -- the champion (and shadow) in force, as "name vN (sha256 prefix)"
    models            text        NOT NULL,
    engine            text        NOT NULL,
    reason            text        NOT NULL CHECK (reason IN ('start', 'reload')),
    applied_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX policy_changes_applied_at ON policy_changes (applied_at);

ALTER TABLE policy_changes OWNER TO riskstream_owner;
GRANT INSERT ON policy_changes TO riskstream_writer;
GRANT USAGE ON SEQUENCE policy_changes_id_seq TO riskstream_writer;
GRANT SELECT ON policy_changes TO riskstream_analyst;
