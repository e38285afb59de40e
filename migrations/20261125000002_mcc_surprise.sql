-- The merchant language model's surprise at each transaction's merchant
-- category: -log p(mcc | the card's previous mccs), in nats. NULL when the
-- engine ran without a [language_model]. Also stored in `features` under
-- the key `mcc_surprise`.
ALTER TABLE risk_decisions ADD COLUMN mcc_surprise real;

-- decision_reasons gains the surprise as its last column (CREATE OR REPLACE
-- VIEW may only append columns); everything before it is unchanged.
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
       d.mcc, d.mcc_surprise
  FROM risk_decisions d
  JOIN attention_explanations e USING (tx_id)
  JOIN model_versions m ON m.name = d.model_name AND m.version = d.model_version AND m.sha256 = d.model_sha256;
