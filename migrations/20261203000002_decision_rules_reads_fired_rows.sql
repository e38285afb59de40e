-- decision_rules unnested rules_fired of every decision: a scan of the whole
-- table although ~1 % of decisions fire a rule (seconds at 10M decisions;
-- bench/sql_scale.py). The same rows, read through the partial index
-- risk_decisions_rules_fired (rules_fired <> '{}'), which the planner can
-- only use when the view says so.
CREATE OR REPLACE VIEW decision_rules AS
SELECT d.tx_id, d.ts, d.card_id, d.amount, d.channel, d.score, d.decision,
       d.threshold_version, f.position, f.name AS rule, r.action, r.reason
  FROM risk_decisions d
 CROSS JOIN LATERAL unnest(d.rules_fired) WITH ORDINALITY AS f(name, position)
  JOIN threshold_sets t ON t.version = d.threshold_version
  LEFT JOIN LATERAL (
        SELECT x ->> 'action' AS action, x ->> 'reason' AS reason
          FROM jsonb_array_elements(t.thresholds -> 'rules' -> 'rule') AS x
         WHERE x ->> 'name' = f.name) r ON true
 WHERE d.rules_fired <> '{}';
