-- A shadow model (config [shadow], issue 11): a second fraud model scored on
-- every transaction beside the one deciding. Its would-be decision (under the
-- same thresholds and rules, rules reading its score) and its explanation
-- are stored here, in the same transaction as the real decision, and never
-- decide anything. The history ids are the decision's
-- (attention_explanations.history_tx_ids): the same featurized input.
CREATE TABLE shadow_decisions (
    tx_id             text        NOT NULL,
    model_name        text        NOT NULL,
    model_version     text        NOT NULL,
    model_sha256      text        NOT NULL,
    score             real        NOT NULL,
    decision          text        NOT NULL CHECK (decision IN ('approve', 'review', 'decline')),
    threshold_version integer     NOT NULL REFERENCES threshold_sets (version),
    rules_fired       text[]      NOT NULL DEFAULT '{}',
    feature_weights   real[]      NOT NULL,
    history_weights   real[]      NOT NULL,
    decided_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tx_id, model_sha256)
);

-- The champion against each shadow model, per day, on the same transactions,
-- against the labels received so far (a transaction without a fraud label
-- counts as legitimate, as in alert_quality).
CREATE VIEW shadow_comparison AS
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
  LEFT JOIN labels l USING (tx_id)
 GROUP BY 1, 2, 3;

ALTER TABLE shadow_decisions OWNER TO riskstream_owner;
ALTER VIEW shadow_comparison OWNER TO riskstream_owner;
-- The engine inserts shadow rows and never reads or changes them.
GRANT INSERT ON shadow_decisions TO riskstream_writer;
GRANT SELECT ON shadow_decisions, shadow_comparison TO riskstream_analyst;
