-- Rules beside the model (config [rules], issue 11). A policy is thresholds
-- and rules together: threshold_sets.thresholds holds its rules under the key
-- "rules" ({"lists": {...}, "rule": [{"name", "when", "action", "reason"}]})
-- when it has any, and a changed rule gets a new version like a changed
-- threshold. Each decision records the rules that fired, in precedence order.
ALTER TABLE risk_decisions ADD COLUMN rules_fired text[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN risk_decisions.rules_fired IS
    'names of the rules that fired, in precedence order; threshold_sets.thresholds->''rules'' of threshold_version defines them (view decision_rules)';
CREATE INDEX risk_decisions_rules_fired ON risk_decisions (ts) WHERE rules_fired <> '{}';

-- One row per fired rule, with its action and reason as the policy in force
-- at the decision defined them.
CREATE VIEW decision_rules AS
SELECT d.tx_id, d.ts, d.card_id, d.amount, d.channel, d.score, d.decision,
       d.threshold_version, f.position, f.name AS rule, r.action, r.reason
  FROM risk_decisions d
 CROSS JOIN LATERAL unnest(d.rules_fired) WITH ORDINALITY AS f(name, position)
  JOIN threshold_sets t ON t.version = d.threshold_version
  LEFT JOIN LATERAL (
        SELECT x ->> 'action' AS action, x ->> 'reason' AS reason
          FROM jsonb_array_elements(t.thresholds -> 'rules' -> 'rule') AS x
         WHERE x ->> 'name' = f.name) r ON true;

-- decision_reasons shows the fired rules' reasons beside the attention (new
-- columns go last: CREATE OR REPLACE VIEW may only append).
CREATE OR REPLACE VIEW decision_reasons AS
SELECT d.tx_id, d.ts, d.card_id, d.amount, d.channel, d.score, d.decision,
       d.model_name, d.model_version, d.threshold_version,
       (SELECT array_agg(f.name || ' (' || round(f.w::numeric, 3) || ')' ORDER BY f.w DESC)
          FROM (SELECT n AS name, w
                  FROM unnest(m.feature_names, e.feature_weights) AS u(n, w)
                 ORDER BY w DESC LIMIT 3) f) AS top_features,
       (SELECT array_agg(h.tx || ' (' || round(h.w::numeric, 3) || ')' ORDER BY h.w DESC)
          FROM (SELECT tx, w
                  FROM unnest(e.history_tx_ids, e.history_weights) AS u(tx, w)
                 WHERE tx IS NOT NULL
                 ORDER BY w DESC LIMIT 3) h) AS top_history,
       d.mcc, d.mcc_surprise,
       (SELECT array_agg(r.name || ': ' || coalesce(nullif(x ->> 'reason', ''), x ->> 'action')
                         ORDER BY r.position)
          FROM unnest(d.rules_fired) WITH ORDINALITY AS r(name, position)
          JOIN threshold_sets t ON t.version = d.threshold_version
          JOIN LATERAL jsonb_array_elements(t.thresholds -> 'rules' -> 'rule') AS x
            ON x ->> 'name' = r.name) AS rule_reasons
  FROM risk_decisions d
  JOIN attention_explanations e USING (tx_id)
  JOIN model_versions m ON m.name = d.model_name AND m.version = d.model_version AND m.sha256 = d.model_sha256;

ALTER VIEW decision_rules OWNER TO riskstream_owner;
GRANT SELECT ON decision_rules TO riskstream_analyst;
