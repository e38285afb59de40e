-- The review console (issue 13): analysts label decisions by hand.
--
-- `labels` stays what the stream received on the labels topic (chargebacks,
-- confirmed frauds): the engine's card and terminal state is rebuilt from it,
-- so a replay decides exactly as before. A reviewer's label is an audit row
-- in `label_reviews`, never an update: who, when, what, and a note. A
-- relabel is another row; the latest row of a transaction is its review
-- label. `labels_in_force` is what every quality figure reads: the stream's
-- label when there is one (it is the ground truth and wins), else the latest
-- review.
--
-- riskstream_reviewer (NOLOGIN, like the other group roles; scripts/stack
-- creates it and a login for the local console) reads what analysts read and
-- inserts reviews; it can neither change nor delete one.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'riskstream_reviewer') THEN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = current_user
                                             AND (rolsuper OR rolcreaterole)) THEN
            RAISE EXCEPTION 'role riskstream_reviewer does not exist and % may not create roles', current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'create it first (scripts/stack up does; see docs/OPERATIONS.md)';
        END IF;
        CREATE ROLE riskstream_reviewer NOLOGIN;
    END IF;
END
$$;

CREATE TABLE label_reviews (
    id          bigserial   PRIMARY KEY,
    tx_id       text        NOT NULL,
    is_fraud    boolean     NOT NULL,
    reviewer    text        NOT NULL CHECK (reviewer <> ''),
    reviewed_at timestamptz NOT NULL DEFAULT now(),
    note        text        NOT NULL DEFAULT '' CHECK (length(note) <= 2000)
);
-- A decision's reviews, latest first (the console's decision page and the view below).
CREATE INDEX label_reviews_by_tx ON label_reviews (tx_id, id DESC);

CREATE VIEW labels_in_force AS
SELECT tx_id, is_fraud, reported_at AS labelled_at, 'stream'::text AS source, NULL::text AS reviewer
  FROM labels
UNION ALL
SELECT * FROM (
    SELECT DISTINCT ON (r.tx_id) r.tx_id, r.is_fraud, r.reviewed_at, 'review'::text, r.reviewer
      FROM label_reviews r
     WHERE NOT EXISTS (SELECT FROM labels l WHERE l.tx_id = r.tx_id)
     ORDER BY r.tx_id, r.id DESC) latest;

-- The quality views read labels_in_force from now on (same columns as before).
CREATE OR REPLACE VIEW alert_quality AS
SELECT date_trunc('day', d.ts)::date AS day,
       count(*) FILTER (WHERE d.decision <> 'approve') AS alerts,
       count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud) AS true_alerts,
       count(*) FILTER (WHERE l.is_fraud) AS frauds,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE d.decision <> 'approve'), 0), 4) AS precision,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS recall
  FROM risk_decisions d
  LEFT JOIN labels_in_force l USING (tx_id)
 GROUP BY 1;

-- alert_quality per model and policy (threshold_sets) version: how each
-- version in force did, day by day.
CREATE VIEW alert_quality_by_version AS
SELECT date_trunc('day', d.ts)::date AS day,
       d.model_name || ' v' || d.model_version AS model,
       d.threshold_version,
       count(*) AS decisions,
       count(*) FILTER (WHERE d.decision <> 'approve') AS alerts,
       count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud) AS true_alerts,
       count(*) FILTER (WHERE l.is_fraud) AS frauds,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE d.decision <> 'approve'), 0), 4) AS precision,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS recall
  FROM risk_decisions d
  LEFT JOIN labels_in_force l USING (tx_id)
 GROUP BY 1, 2, 3;

CREATE OR REPLACE VIEW shadow_comparison AS
SELECT date_trunc('day', d.ts)::date AS day,
       d.model_name || ' v' || d.model_version AS champion,
       s.model_name || ' v' || s.model_version AS shadow,
       count(*) AS decisions,
       count(*) FILTER (WHERE l.is_fraud) AS frauds,
       count(*) FILTER (WHERE d.decision <> 'approve') AS champion_alerts,
       count(*) FILTER (WHERE s.decision <> 'approve') AS shadow_alerts,
       count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud) AS champion_true_alerts,
       count(*) FILTER (WHERE s.decision <> 'approve' AND l.is_fraud) AS shadow_true_alerts,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE d.decision <> 'approve'), 0), 4) AS champion_precision,
       round((count(*) FILTER (WHERE s.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE s.decision <> 'approve'), 0), 4) AS shadow_precision,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS champion_recall,
       round((count(*) FILTER (WHERE s.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS shadow_recall,
       count(*) FILTER (WHERE d.decision <> s.decision) AS disagreements,
       round(avg(abs(d.score - s.score))::numeric, 6) AS mean_abs_score_diff
  FROM shadow_decisions s
  JOIN risk_decisions d USING (tx_id)
  LEFT JOIN labels_in_force l USING (tx_id)
 GROUP BY 1, 2, 3;

ALTER TABLE label_reviews OWNER TO riskstream_owner;
ALTER VIEW labels_in_force OWNER TO riskstream_owner;
ALTER VIEW alert_quality_by_version OWNER TO riskstream_owner;

GRANT SELECT ON label_reviews, labels_in_force, alert_quality_by_version TO riskstream_analyst;
-- `riskstream backtest` with the engine's configuration reads labels_in_force
-- as the engine's login (it read labels before).
GRANT SELECT ON labels_in_force TO riskstream_writer;
-- The reviewer reads what an analyst reads, now and later, and appends reviews.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO riskstream_reviewer;
ALTER DEFAULT PRIVILEGES FOR ROLE riskstream_owner GRANT SELECT ON TABLES TO riskstream_reviewer;
GRANT INSERT ON label_reviews TO riskstream_reviewer;
GRANT USAGE ON SEQUENCE label_reviews_id_seq TO riskstream_reviewer;
