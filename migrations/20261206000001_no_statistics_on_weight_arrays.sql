-- No planner statistics on the per-decision arrays (issue 10).
--
-- ANALYZE samples 30,000 rows of a table and, for an array column, builds
-- element statistics from every element of every sampled array: on a month
-- partition of 73k decisions, `ANALYZE attention_explanations_p…` took 597 ms
-- and 57 ms without statistics on its three arrays, `ANALYZE
-- risk_decisions_p…` 356 ms and 216 ms without them on `features`.
-- Autovacuum analyzes a partition every time a tenth of it is new, so on a
-- young partition (every month's first days, every fresh database) it ran
-- about as often as the rows arrived: 1.5 s of the 7.5 s of Postgres CPU that
-- storing 200k decisions took.
--
-- No query filters or joins on these arrays' elements (the analyst views
-- unnest them by position, which no statistic estimates), so the planner
-- loses nothing. `rules_fired` keeps its statistics: analysts filter on it.

ALTER TABLE risk_decisions ALTER COLUMN features SET STATISTICS 0;
ALTER TABLE attention_explanations
    ALTER COLUMN feature_weights SET STATISTICS 0,
    ALTER COLUMN history_tx_ids SET STATISTICS 0,
    ALTER COLUMN history_weights SET STATISTICS 0;
ALTER TABLE shadow_decisions
    ALTER COLUMN feature_weights SET STATISTICS 0,
    ALTER COLUMN history_weights SET STATISTICS 0;

-- A partition made by `CREATE TABLE … (LIKE parent)` does not take the
-- parent's per-column statistics targets: the months created from now on
-- copy them (the rest of the function is unchanged).
CREATE OR REPLACE FUNCTION create_decision_partitions(days date[])
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
-- Never hold the engine's batch for long behind an analyst's query on the
-- default partition: fail, and the rows go to the default partition.
SET lock_timeout = '5s'
AS $$
DECLARE
    month date;
    parent text;
    part text;
    lo timestamptz;
    hi timestamptz;
    created integer := 0;
    col record;
BEGIN
    -- One creator at a time (instances of the engine, the CLI).
    PERFORM pg_advisory_xact_lock(hashtext('riskstream.partitions'));
    FOR month IN SELECT DISTINCT date_trunc('month', d)::date FROM unnest(days) AS d
                  WHERE d IS NOT NULL ORDER BY 1 LOOP
        lo := month::timestamp AT TIME ZONE 'UTC';
        hi := (month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        FOREACH parent IN ARRAY ARRAY['risk_decisions', 'attention_explanations', 'shadow_decisions'] LOOP
            part := decision_partition_name(parent, month);
            CONTINUE WHEN to_regclass(part) IS NOT NULL;
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
            FOR col IN SELECT attname, attstattarget FROM pg_attribute
                        WHERE attrelid = parent::regclass AND attnum > 0 AND NOT attisdropped
                          AND attstattarget >= 0 LOOP
                EXECUTE format('ALTER TABLE %I ALTER COLUMN %I SET STATISTICS %s',
                               part, col.attname, col.attstattarget);
            END LOOP;
            -- Rows of this month that went to the default partition move in.
            EXECUTE format('WITH moved AS (DELETE FROM %I WHERE ts >= $1 AND ts < $2 RETURNING *)
                            INSERT INTO %I SELECT * FROM moved', parent || '_default', part)
              USING lo, hi;
            -- The constraint lets ATTACH skip scanning the new partition.
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (ts >= %L AND ts < %L)',
                           part, part || '_range', lo, hi);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           parent, part, lo, hi);
            EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part, part || '_range');
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$$;
