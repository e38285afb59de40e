-- Decisions name the threshold set they were decided under (threshold_version).
-- A foreign key checked that per row: one RI trigger, an index probe and a
-- FOR KEY SHARE lock on the same threshold_sets row for every decision. Measured
-- on 200k stored decisions (issue 10): 4.7 ms of Postgres CPU per 1,000 rows,
-- the most expensive single thing about storing a decision after its indexes.
-- The same guarantee, checked once per statement (the sink's COPY is one
-- statement per batch) against the distinct versions it inserted: 1.2 ms per
-- 1,000 rows. An insert naming an unknown version still fails, with the same
-- SQLSTATE (23503, foreign_key_violation).
--
-- What the foreign key also did and this does not: forbid deleting or
-- renumbering a referenced threshold set. Only riskstream_owner could; the
-- engine's role inserts threshold sets and never changes them.

ALTER TABLE risk_decisions DROP CONSTRAINT risk_decisions_threshold_version_fkey;
ALTER TABLE shadow_decisions DROP CONSTRAINT shadow_decisions_threshold_version_fkey;

CREATE FUNCTION check_threshold_versions() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing integer;
BEGIN
    SELECT n.threshold_version INTO missing
      FROM (SELECT DISTINCT threshold_version FROM inserted) n
     WHERE NOT EXISTS (SELECT 1 FROM threshold_sets s WHERE s.version = n.threshold_version)
     LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation USING
            MESSAGE = format('insert into %I names threshold_version %s, which is not in threshold_sets',
                             TG_TABLE_NAME, missing),
            TABLE = TG_TABLE_NAME, COLUMN = 'threshold_version';
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION check_threshold_versions() IS
    'statement-level check that inserted decisions name an existing threshold_sets.version (in place of a per-row foreign key)';

CREATE TRIGGER risk_decisions_threshold_version
    AFTER INSERT ON risk_decisions REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_threshold_versions();
CREATE TRIGGER shadow_decisions_threshold_version
    AFTER INSERT ON shadow_decisions REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION check_threshold_versions();
