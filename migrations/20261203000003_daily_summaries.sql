-- Daily summaries, so that the analyst views stay fast as decisions pile up
-- (issue 13). daily_alerts, alert_quality, alert_quality_by_version,
-- versions_in_force and shadow_comparison aggregated every decision: 6-12 s
-- each at 10M decisions (bench/sql_scale.py). Days (UTC) are now summarised
-- per model, policy version and decision into decision_days (and
-- shadow_days) by refresh_summaries(), run every minute (the console, a
-- timer); each view reads the summaries up to summary_state.through and
-- aggregates live only the decisions of later days (an index range scan on
-- ts; usually none).
--
-- Exact as of the last refresh. A refresh summarises the days new since the
-- last one, the days that received labels or reviews since (with five
-- minutes of overlap, for transactions that committed late), and the days
-- of the last `recheck_days` whose decision count no longer matches (the
-- day still filling; a partition that was behind delivering late
-- decisions). Before the first refresh everything is aggregated live,
-- exactly as before. Days are UTC days everywhere (they were the session
-- time zone's before).

CREATE TABLE summary_state (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- every day up to this one is in decision_days (as of refreshed_at);
    -- NULL: nothing summarised yet
    through      date,
    -- labels and reviews of summarised days before this time are counted
    refreshed_at timestamptz
);
INSERT INTO summary_state DEFAULT VALUES;

CREATE TABLE decision_days (
    day               date        NOT NULL,
    model_name        text        NOT NULL,
    model_version     text        NOT NULL,
    model_sha256      text        NOT NULL,
    threshold_version integer     NOT NULL,
    decision          text        NOT NULL,
    decisions         bigint      NOT NULL,
    score_sum         float8      NOT NULL,
    -- decisions that labels_in_force called fraud at the refresh
    frauds            bigint      NOT NULL,
    first_decided_at  timestamptz NOT NULL,
    last_decided_at   timestamptz NOT NULL,
    PRIMARY KEY (day, model_name, model_version, model_sha256, threshold_version, decision)
);

-- The champion against each shadow model (shadow_comparison), per day.
CREATE TABLE shadow_days (
    day                  date   NOT NULL,
    champion             text   NOT NULL,
    shadow               text   NOT NULL,
    decisions            bigint NOT NULL,
    frauds               bigint NOT NULL,
    champion_alerts      bigint NOT NULL,
    shadow_alerts        bigint NOT NULL,
    champion_true_alerts bigint NOT NULL,
    shadow_true_alerts   bigint NOT NULL,
    disagreements        bigint NOT NULL,
    abs_score_diff_sum   float8 NOT NULL,
    PRIMARY KEY (day, champion, shadow)
);

-- The one definition of a day's figures: decisions with ts in [lo, hi).
CREATE FUNCTION decision_days_between(lo timestamptz, hi timestamptz)
RETURNS SETOF decision_days LANGUAGE sql STABLE AS $$
    SELECT (d.ts AT TIME ZONE 'UTC')::date, d.model_name, d.model_version, d.model_sha256,
           d.threshold_version, d.decision, count(*), sum(d.score::float8),
           count(*) FILTER (WHERE l.is_fraud), min(d.decided_at), max(d.decided_at)
      FROM risk_decisions d
      LEFT JOIN labels_in_force l USING (tx_id)
     WHERE d.ts >= lo AND d.ts < hi
     GROUP BY 1, 2, 3, 4, 5, 6
$$;

CREATE FUNCTION shadow_days_between(lo timestamptz, hi timestamptz)
RETURNS SETOF shadow_days LANGUAGE sql STABLE AS $$
    SELECT (d.ts AT TIME ZONE 'UTC')::date,
           d.model_name || ' v' || d.model_version, s.model_name || ' v' || s.model_version,
           count(*), count(*) FILTER (WHERE l.is_fraud),
           count(*) FILTER (WHERE d.decision <> 'approve'),
           count(*) FILTER (WHERE s.decision <> 'approve'),
           count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud),
           count(*) FILTER (WHERE s.decision <> 'approve' AND l.is_fraud),
           count(*) FILTER (WHERE d.decision <> s.decision),
           sum(abs(d.score - s.score)::float8)
      FROM shadow_decisions s
      JOIN risk_decisions d USING (tx_id)
      LEFT JOIN labels_in_force l USING (tx_id)
     WHERE d.ts >= lo AND d.ts < hi
     GROUP BY 1, 2, 3
$$;

-- The summarised days, and the days after them live.
CREATE VIEW decision_days_in_force AS
SELECT s.*
  FROM decision_days s, summary_state st
 WHERE s.day <= st.through
UNION ALL
SELECT live.*
  FROM summary_state st,
       LATERAL decision_days_between(
           coalesce((st.through + 1)::timestamp AT TIME ZONE 'UTC', '-infinity'), 'infinity') live;

CREATE VIEW shadow_days_in_force AS
SELECT s.*
  FROM shadow_days s, summary_state st
 WHERE s.day <= st.through
UNION ALL
SELECT live.*
  FROM summary_state st,
       LATERAL shadow_days_between(
           coalesce((st.through + 1)::timestamp AT TIME ZONE 'UTC', '-infinity'), 'infinity') live;

CREATE FUNCTION refresh_summaries(recheck_days integer DEFAULT 7)
RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    st summary_state;
    newest date;
    first date;
    days date[];
    lo date;
    hi date;
    started timestamptz := now();
BEGIN
    -- One refresh at a time; another one at the same moment has nothing to add.
    IF NOT pg_try_advisory_xact_lock(hashtext('riskstream.refresh_summaries')) THEN
        RETURN 0;
    END IF;
    SELECT * INTO st FROM summary_state FOR UPDATE;
    -- Up to the newest day, which is still filling: the count check below
    -- summarises it again at every refresh while decisions arrive.
    SELECT (min(ts) AT TIME ZONE 'UTC')::date, (max(ts) AT TIME ZONE 'UTC')::date
      INTO first, newest FROM risk_decisions;
    IF newest IS NULL THEN
        RETURN 0;
    END IF;
    newest := greatest(newest, st.through);
    SELECT coalesce(array_agg(DISTINCT x.day), '{}') INTO days FROM (
        -- new since the last refresh
        SELECT g::date AS day
          FROM generate_series(coalesce(st.through + 1, first), newest, interval '1 day') g
        UNION ALL
        -- labels and reviews since the last refresh
        SELECT (r.ts AT TIME ZONE 'UTC')::date
          FROM labels l JOIN risk_decisions r USING (tx_id)
         WHERE l.received_at >= st.refreshed_at - interval '5 minutes'
        UNION ALL
        SELECT (r.ts AT TIME ZONE 'UTC')::date
          FROM label_reviews v JOIN risk_decisions r USING (tx_id)
         WHERE v.reviewed_at >= st.refreshed_at - interval '5 minutes'
        UNION ALL
        -- recent summarised days whose decisions changed
        SELECT c.day
          FROM (SELECT (ts AT TIME ZONE 'UTC')::date AS day, count(*) AS n
                  FROM risk_decisions
                 WHERE ts >= (st.through + 1 - recheck_days)::timestamp AT TIME ZONE 'UTC'
                   AND ts < (st.through + 1)::timestamp AT TIME ZONE 'UTC'
                 GROUP BY 1) c
          LEFT JOIN (SELECT s.day, sum(s.decisions) AS n FROM decision_days s GROUP BY 1) s USING (day)
         WHERE s.n IS DISTINCT FROM c.n
    ) x
     WHERE x.day <= newest;
    -- Consecutive days in one pass each (the first refresh of a year: one
    -- pass instead of 365).
    FOR lo, hi IN
        SELECT min(day), max(day)
          FROM (SELECT day, day - (row_number() OVER (ORDER BY day))::integer AS run
                  FROM unnest(days) AS day) r
         GROUP BY run
    LOOP
        DELETE FROM decision_days WHERE day BETWEEN lo AND hi;
        INSERT INTO decision_days
        SELECT * FROM decision_days_between(lo::timestamp AT TIME ZONE 'UTC',
                                            (hi + 1)::timestamp AT TIME ZONE 'UTC');
        -- Shadow rows commit with their decisions: the same days change.
        DELETE FROM shadow_days WHERE day BETWEEN lo AND hi;
        INSERT INTO shadow_days
        SELECT * FROM shadow_days_between(lo::timestamp AT TIME ZONE 'UTC',
                                          (hi + 1)::timestamp AT TIME ZONE 'UTC');
    END LOOP;
    UPDATE summary_state SET through = newest, refreshed_at = started;
    RETURN cardinality(days);
END
$$;

-- The views, on the summaries (same columns as before).
CREATE OR REPLACE VIEW daily_alerts AS
SELECT day, decision, sum(decisions)::bigint AS decisions,
       round((sum(score_sum) / sum(decisions))::numeric, 4) AS avg_score
  FROM decision_days_in_force
 GROUP BY 1, 2;

CREATE OR REPLACE VIEW alert_quality_by_version AS
SELECT day, model_name || ' v' || model_version AS model, threshold_version,
       sum(decisions)::bigint AS decisions,
       coalesce(sum(decisions) FILTER (WHERE decision <> 'approve'), 0)::bigint AS alerts,
       coalesce(sum(frauds) FILTER (WHERE decision <> 'approve'), 0)::bigint AS true_alerts,
       sum(frauds)::bigint AS frauds,
       round(coalesce(sum(frauds) FILTER (WHERE decision <> 'approve'), 0)
             / NULLIF(sum(decisions) FILTER (WHERE decision <> 'approve'), 0), 4) AS precision,
       round(coalesce(sum(frauds) FILTER (WHERE decision <> 'approve'), 0)
             / NULLIF(sum(frauds), 0), 4) AS recall
  FROM decision_days_in_force
 GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW alert_quality AS
SELECT day, sum(alerts)::bigint AS alerts, sum(true_alerts)::bigint AS true_alerts,
       sum(frauds)::bigint AS frauds,
       round(sum(true_alerts) / NULLIF(sum(alerts), 0), 4) AS precision,
       round(sum(true_alerts) / NULLIF(sum(frauds), 0), 4) AS recall
  FROM alert_quality_by_version
 GROUP BY 1;

CREATE OR REPLACE VIEW versions_in_force AS
SELECT s.model_name, s.model_version, s.model_sha256, s.threshold_version,
       t.thresholds, t.changed_by,
       min(s.first_decided_at) AS first_decision, max(s.last_decided_at) AS last_decision,
       sum(s.decisions)::bigint AS decisions
  FROM decision_days_in_force s
  JOIN threshold_sets t ON t.version = s.threshold_version
 GROUP BY 1, 2, 3, 4, 5, 6;

CREATE OR REPLACE VIEW shadow_comparison AS
SELECT day, champion, shadow, sum(decisions)::bigint AS decisions, sum(frauds)::bigint AS frauds,
       sum(champion_alerts)::bigint AS champion_alerts, sum(shadow_alerts)::bigint AS shadow_alerts,
       sum(champion_true_alerts)::bigint AS champion_true_alerts,
       sum(shadow_true_alerts)::bigint AS shadow_true_alerts,
       round(sum(champion_true_alerts) / NULLIF(sum(champion_alerts), 0), 4) AS champion_precision,
       round(sum(shadow_true_alerts) / NULLIF(sum(shadow_alerts), 0), 4) AS shadow_precision,
       round(sum(champion_true_alerts) / NULLIF(sum(frauds), 0), 4) AS champion_recall,
       round(sum(shadow_true_alerts) / NULLIF(sum(frauds), 0), 4) AS shadow_recall,
       sum(disagreements)::bigint AS disagreements,
       round((sum(abs_score_diff_sum) / sum(decisions))::numeric, 6) AS mean_abs_score_diff
  FROM shadow_days_in_force
 GROUP BY 1, 2, 3;

ALTER TABLE summary_state OWNER TO riskstream_owner;
ALTER TABLE shadow_days OWNER TO riskstream_owner;
ALTER VIEW shadow_days_in_force OWNER TO riskstream_owner;
ALTER FUNCTION shadow_days_between(timestamptz, timestamptz) OWNER TO riskstream_owner;
ALTER TABLE decision_days OWNER TO riskstream_owner;
ALTER VIEW decision_days_in_force OWNER TO riskstream_owner;
ALTER FUNCTION decision_days_between(timestamptz, timestamptz) OWNER TO riskstream_owner;
ALTER FUNCTION refresh_summaries(integer) OWNER TO riskstream_owner;
GRANT SELECT ON summary_state, decision_days, decision_days_in_force, shadow_days,
                shadow_days_in_force
    TO riskstream_analyst, riskstream_reviewer;
-- Refreshing writes only the summaries (as their owner): the engine's
-- login (`riskstream summarise`, e.g. on a timer) and the console's may.
REVOKE EXECUTE ON FUNCTION refresh_summaries(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION refresh_summaries(integer) TO riskstream_writer, riskstream_reviewer;
