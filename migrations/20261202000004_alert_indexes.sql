-- Indexes for what analysts open first (issue 13): alerts are ~1-2 % of
-- decisions, so partial indexes on them cost the sink little (one entry per
-- alert) and let "the highest-scored alerts" and "the review queue, newest
-- first" read only alerts instead of every decision. Measured on the demo's
-- 100,000 decisions: the README's first query (decision_reasons WHERE
-- decision <> 'approve' ORDER BY score DESC LIMIT 20) 35-44 ms -> 14 ms.
CREATE INDEX IF NOT EXISTS risk_decisions_alerts_by_score
    ON risk_decisions (score DESC) WHERE decision <> 'approve';
CREATE INDEX IF NOT EXISTS risk_decisions_review_queue
    ON risk_decisions (ts DESC) WHERE decision = 'review';
