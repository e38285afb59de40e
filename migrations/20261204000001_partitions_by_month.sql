-- Decisions, explanations and shadow rows partitioned by UTC calendar month
-- of the transaction (issue 13), so that retention drops a month's tables
-- instead of deleting millions of rows, and a month's rows sit together.
-- Months, not days: with a year of daily partitions every query without a
-- time range (the top alerts by score, a decision by tx_id, the rules
-- fired) spent 40-126 ms planning 366 partitions per table
-- (bench/sql_scale.py at 10M decisions); docs/DECISIONS.md has the figures.
--
--   risk_decisions, attention_explanations, shadow_decisions
--       PARTITION BY RANGE (ts): one partition per UTC month, named
--       <table>_pYYYYMM, plus <table>_default for a row whose month has no
--       partition yet (the engine creates its batches' months first, so it
--       holds rows only when creating one failed; creating that month later
--       moves them out). attention_explanations and shadow_decisions gain
--       the decision's ts, their partition key.
--   decision_ids (tx_id PRIMARY KEY, ts)
--       A partitioned table's unique keys must contain the partition key, so
--       risk_decisions' key is now (tx_id, ts) and would no longer stop the
--       same tx_id being decided twice with another time. This table does:
--       the sink inserts each decision's id here first, in the same
--       transaction, and a conflict is a duplicate (dead-lettered as
--       before). It also tells when a tx_id was decided, so a query by
--       tx_id reads one partition.
--   create_decision_partitions(days date[])
--       Creates the missing partitions of the months of `days` for the
--       three tables (the engine, before each batch with a new month;
--       `riskstream partitions` ahead of time). Each is created on its own
--       and attached, which locks the parent only against other DDL, not
--       against reads or inserts.
--   drop_decisions_before(cutoff date)
--       Retention: drops the months that end on or before cutoff's month
--       begins (whole months only), with their decision_ids, labels, label
--       reviews and summaries (`riskstream partitions`, [retention] in the
--       config; as the owner, since the engine's login never deletes).
--
-- The explanation's foreign key to its decision is gone: both are written in
-- one transaction by the sink, and a foreign key into a partitioned table
-- would make every dropped month re-check each of its rows.
--
-- Existing rows are copied into the new tables (minutes for millions of
-- rows; the engine must be stopped while this runs, as for any migration).
-- The views on these tables are re-created from their current definitions,
-- with their owners, grants and comments.

CREATE TABLE decision_ids (
    tx_id text        PRIMARY KEY,
    ts    timestamptz NOT NULL
);
-- Retention deletes by time; ids arrive roughly in time order, so a block
-- range index is enough and costs the sink almost nothing.
CREATE INDEX decision_ids_ts ON decision_ids USING brin (ts);
COMMENT ON TABLE decision_ids IS
    'every decided tx_id once, with its ts: the unique key risk_decisions (partitioned by month) cannot have';

-- The views built on the three tables, to re-create after the swap (oid
-- order is creation order, so a view comes after the ones it reads).
CREATE TEMP TABLE partition_saved_views AS
WITH RECURSIVE dependent(oid) AS (
    SELECT r.ev_class
      FROM pg_depend d
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.classid = 'pg_rewrite'::regclass
       AND d.refclassid = 'pg_class'::regclass
       AND d.refobjid IN ('risk_decisions'::regclass, 'attention_explanations'::regclass,
                          'shadow_decisions'::regclass)
    UNION
    SELECT r.ev_class
      FROM dependent v
      JOIN pg_depend d ON d.refobjid = v.oid AND d.refclassid = 'pg_class'::regclass
      JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
     WHERE r.ev_class <> v.oid
)
SELECT c.oid, c.relname, pg_get_viewdef(c.oid) AS definition, c.reloptions,
       pg_get_userbyid(c.relowner) AS owner, c.relacl,
       (SELECT array_agg(ARRAY[coalesce(a.attname, ''), ds.description])
          FROM pg_description ds
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ds.objsubid AND ds.objsubid > 0
         WHERE ds.objoid = c.oid AND ds.classoid = 'pg_class'::regclass) AS comments
  FROM pg_class c
 WHERE c.oid IN (SELECT oid FROM dependent) AND c.relkind = 'v';

-- Dropped without CASCADE (anything else depending on them fails the
-- migration instead of vanishing), dependents first: a view replaced after
-- others were created may read newer ones, so creation order is not enough
-- and a view still read by another is retried after it.
DO $$
DECLARE
    left_over text[] := (SELECT array_agg(relname ORDER BY oid DESC) FROM partition_saved_views);
    still text[];
    v text;
BEGIN
    WHILE cardinality(left_over) > 0 LOOP
        still := '{}';
        FOREACH v IN ARRAY left_over LOOP
            BEGIN
                EXECUTE format('DROP VIEW %I', v);
            EXCEPTION WHEN dependent_objects_still_exist THEN
                still := still || v;
            END;
        END LOOP;
        IF still = left_over THEN
            RAISE EXCEPTION 'cannot drop views %: something else depends on them', still;
        END IF;
        left_over := still;
    END LOOP;
END
$$;

-- The old tables step aside, their indexes and constraints renamed so that
-- the new tables can take the names.
DO $$
DECLARE
    t text;
    o record;
BEGIN
    FOREACH t IN ARRAY ARRAY['risk_decisions', 'attention_explanations', 'shadow_decisions'] LOOP
        FOR o IN SELECT conname FROM pg_constraint WHERE conrelid = t::regclass AND contype IN ('p', 'u', 'f') LOOP
            EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I', t, o.conname, 'unpartitioned_' || o.conname);
        END LOOP;
        FOR o IN SELECT i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                  WHERE x.indrelid = t::regclass AND i.relname NOT LIKE 'unpartitioned\_%' LOOP
            EXECUTE format('ALTER INDEX %I RENAME TO %I', o.relname, 'unpartitioned_' || o.relname);
        END LOOP;
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t, 'unpartitioned_' || t);
    END LOOP;
END
$$;

CREATE TABLE risk_decisions (
    LIKE unpartitioned_risk_decisions INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS,
    PRIMARY KEY (tx_id, ts),
    FOREIGN KEY (threshold_version) REFERENCES threshold_sets (version)
) PARTITION BY RANGE (ts);

CREATE TABLE attention_explanations (
    LIKE unpartitioned_attention_explanations INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS,
    ts timestamptz NOT NULL,
    PRIMARY KEY (tx_id, ts)
) PARTITION BY RANGE (ts);
COMMENT ON COLUMN attention_explanations.ts IS 'the decision''s ts (partition key)';

CREATE TABLE shadow_decisions (
    LIKE unpartitioned_shadow_decisions INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING COMMENTS,
    ts timestamptz NOT NULL,
    PRIMARY KEY (tx_id, model_sha256, ts),
    FOREIGN KEY (threshold_version) REFERENCES threshold_sets (version)
) PARTITION BY RANGE (ts);
COMMENT ON COLUMN shadow_decisions.ts IS 'the decision''s ts (partition key)';

CREATE TABLE risk_decisions_default PARTITION OF risk_decisions DEFAULT;
CREATE TABLE attention_explanations_default PARTITION OF attention_explanations DEFAULT;
CREATE TABLE shadow_decisions_default PARTITION OF shadow_decisions DEFAULT;

-- The indexes of before, now on every partition.
CREATE INDEX risk_decisions_card_ts ON risk_decisions (card_id, ts);
CREATE INDEX risk_decisions_ts ON risk_decisions (ts);
CREATE INDEX risk_decisions_rules_fired ON risk_decisions (ts) WHERE rules_fired <> '{}';
CREATE INDEX risk_decisions_alerts_by_score ON risk_decisions (score DESC) WHERE decision <> 'approve';
CREATE INDEX risk_decisions_review_queue ON risk_decisions (ts DESC) WHERE decision = 'review';

-- The partition of `parent` holding `day`: <parent>_pYYYYMM of its month.
CREATE FUNCTION decision_partition_name(parent text, day date) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT parent || '_p' || to_char(day, 'YYYYMM') || CASE WHEN day < date '0001-01-01' THEN 'bc' ELSE '' END
$$;

CREATE FUNCTION create_decision_partitions(days date[])
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

-- Retention: every month that ended before cutoff's month began; the first
-- days of the months dropped.
CREATE FUNCTION drop_decisions_before(cutoff date)
RETURNS date[] LANGUAGE plpgsql SECURITY DEFINER
SET search_path = public, pg_temp
AS $$
DECLARE
    p record;
    dropped date[] := '{}';
    kept_from date := date_trunc('month', cutoff)::date;
    lo timestamptz := kept_from::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('riskstream.partitions'));
    -- Labels and reviews of the decisions that go (by their decision's time).
    DELETE FROM labels l USING decision_ids i WHERE i.tx_id = l.tx_id AND i.ts < lo;
    DELETE FROM label_reviews r USING decision_ids i WHERE i.tx_id = r.tx_id AND i.ts < lo;
    DELETE FROM decision_ids WHERE ts < lo;
    FOR p IN
        SELECT c.relname AS part, parent.relname AS parent,
               (substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)'))::timestamptz AS lower_bound,
               (substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)'))::timestamptz AS upper_bound
          FROM pg_inherits h
          JOIN pg_class c ON c.oid = h.inhrelid
          JOIN pg_class parent ON parent.oid = h.inhparent
         WHERE parent.relname IN ('risk_decisions', 'attention_explanations', 'shadow_decisions')
           AND c.relispartition
           AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    LOOP
        CONTINUE WHEN p.upper_bound > lo;
        EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', p.parent, p.part);
        EXECUTE format('DROP TABLE %I', p.part);
        IF p.parent = 'risk_decisions' THEN
            dropped := dropped || (p.lower_bound AT TIME ZONE 'UTC')::date;
        END IF;
    END LOOP;
    DELETE FROM risk_decisions_default WHERE ts < lo;
    DELETE FROM attention_explanations_default WHERE ts < lo;
    DELETE FROM shadow_decisions_default WHERE ts < lo;
    -- A dropped month is gone from every view, summaries included.
    DELETE FROM decision_days WHERE day < kept_from;
    DELETE FROM shadow_days WHERE day < kept_from;
    RETURN (SELECT coalesce(array_agg(d ORDER BY d), '{}') FROM unnest(dropped) AS d);
END
$$;

-- Owned like everything else (the partitions the functions create too).
ALTER TABLE decision_ids OWNER TO riskstream_owner;
ALTER TABLE risk_decisions OWNER TO riskstream_owner;
ALTER TABLE attention_explanations OWNER TO riskstream_owner;
ALTER TABLE shadow_decisions OWNER TO riskstream_owner;
ALTER TABLE risk_decisions_default OWNER TO riskstream_owner;
ALTER TABLE attention_explanations_default OWNER TO riskstream_owner;
ALTER TABLE shadow_decisions_default OWNER TO riskstream_owner;
ALTER FUNCTION decision_partition_name(text, date) OWNER TO riskstream_owner;
ALTER FUNCTION create_decision_partitions(date[]) OWNER TO riskstream_owner;
ALTER FUNCTION drop_decisions_before(date) OWNER TO riskstream_owner;

-- The rows of before, in their months' partitions.
SELECT create_decision_partitions(
           (SELECT coalesce(array_agg(DISTINCT (ts AT TIME ZONE 'UTC')::date), '{}')
              FROM unpartitioned_risk_decisions));
INSERT INTO decision_ids SELECT tx_id, ts FROM unpartitioned_risk_decisions;
INSERT INTO risk_decisions SELECT * FROM unpartitioned_risk_decisions;
INSERT INTO attention_explanations (tx_id, feature_weights, history_tx_ids, history_weights, ts)
SELECT e.tx_id, e.feature_weights, e.history_tx_ids, e.history_weights, d.ts
  FROM unpartitioned_attention_explanations e
  JOIN unpartitioned_risk_decisions d USING (tx_id);
INSERT INTO shadow_decisions (tx_id, model_name, model_version, model_sha256, score, decision,
                              threshold_version, rules_fired, feature_weights, history_weights,
                              decided_at, ts)
SELECT s.tx_id, s.model_name, s.model_version, s.model_sha256, s.score, s.decision,
       s.threshold_version, s.rules_fired, s.feature_weights, s.history_weights, s.decided_at, d.ts
  FROM unpartitioned_shadow_decisions s
  JOIN unpartitioned_risk_decisions d USING (tx_id);

-- The same grants as the old tables (decision_ids: those of risk_decisions).
DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT n.new_name, a.privilege_type, pg_get_userbyid(a.grantee) AS grantee
          FROM (VALUES ('risk_decisions', 'unpartitioned_risk_decisions'),
                       ('decision_ids', 'unpartitioned_risk_decisions'),
                       ('attention_explanations', 'unpartitioned_attention_explanations'),
                       ('shadow_decisions', 'unpartitioned_shadow_decisions')) AS n(new_name, old_name)
          JOIN pg_class c ON c.oid = n.old_name::regclass
         CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE a.grantee <> 0 AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON %I TO %I', g.privilege_type, g.new_name, g.grantee);
    END LOOP;
END
$$;

DROP TABLE unpartitioned_shadow_decisions, unpartitioned_attention_explanations, unpartitioned_risk_decisions;

-- The views, as they were (a view reading another not yet re-created is
-- retried after it).
DO $$
DECLARE
    left_over oid[] := (SELECT array_agg(oid ORDER BY oid) FROM partition_saved_views);
    still oid[];
    v record;
    g record;
    c text[];
BEGIN
    WHILE cardinality(left_over) > 0 LOOP
        still := '{}';
        FOR v IN SELECT * FROM partition_saved_views WHERE oid = ANY (left_over) ORDER BY oid LOOP
            BEGIN
                EXECUTE format('CREATE VIEW %I %s AS %s', v.relname,
                               CASE WHEN v.reloptions IS NULL THEN ''
                                    ELSE 'WITH (' || array_to_string(v.reloptions, ', ') || ')' END,
                               v.definition);
            EXCEPTION WHEN undefined_table THEN
                still := still || v.oid;
                CONTINUE;
            END;
            EXECUTE format('ALTER VIEW %I OWNER TO %I', v.relname, v.owner);
            FOR g IN SELECT a.privilege_type, pg_get_userbyid(a.grantee) AS grantee
                       FROM aclexplode(v.relacl) a
                      WHERE a.grantee <> 0 AND a.grantee <> v.owner::regrole LOOP
                EXECUTE format('GRANT %s ON %I TO %I', g.privilege_type, v.relname, g.grantee);
            END LOOP;
            FOR c IN SELECT v.comments[i:i] FROM generate_subscripts(v.comments, 1) AS i LOOP
                IF c[1][1] = '' THEN
                    EXECUTE format('COMMENT ON VIEW %I IS %L', v.relname, c[1][2]);
                ELSE
                    EXECUTE format('COMMENT ON COLUMN %I.%I IS %L', v.relname, c[1][1], c[1][2]);
                END IF;
            END LOOP;
        END LOOP;
        IF still = left_over THEN
            RAISE EXCEPTION 'cannot re-create views %', still;
        END IF;
        left_over := still;
    END LOOP;
END
$$;

REVOKE EXECUTE ON FUNCTION create_decision_partitions(date[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION drop_decisions_before(date) FROM PUBLIC;
-- The engine creates its batches' months. Retention deletes decisions, which
-- the engine's login never does: `riskstream partitions` drops months as the
-- migrating login (the owner).
GRANT EXECUTE ON FUNCTION create_decision_partitions(date[]) TO riskstream_writer;

DROP TABLE partition_saved_views;
