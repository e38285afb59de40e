-- riskstream schema: decisions with their explanations, exactly-once offsets,
-- dead letters, labels, and the audit of models and threshold sets.

CREATE TABLE model_versions (
    name          text        NOT NULL,
    version       text        NOT NULL,
    sha256        text        NOT NULL,
    task          text        NOT NULL,
    feature_names text[]      NOT NULL,
    manifest      jsonb       NOT NULL,
    first_used_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version, sha256)
);

-- Every threshold set ever in force; a version per distinct content.
CREATE TABLE threshold_sets (
    version        serial      PRIMARY KEY,
    content_sha256 text        NOT NULL UNIQUE,
    thresholds     jsonb       NOT NULL,
    changed_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE risk_decisions (
    tx_id             text        PRIMARY KEY,
    ts                timestamptz NOT NULL,
    card_id           text        NOT NULL,
    terminal_id       text        NOT NULL,
    amount            numeric(14, 2) NOT NULL,
    currency          text,
    mcc               integer,
    channel           text,
    country           text,
    score             real        NOT NULL,
    decision          text        NOT NULL CHECK (decision IN ('approve', 'review', 'decline')),
    model_name        text        NOT NULL,
    model_version     text        NOT NULL,
    model_sha256      text        NOT NULL,
    threshold_version integer     NOT NULL REFERENCES threshold_sets (version),
    -- feature name -> value, exactly the model's input
    features          jsonb       NOT NULL,
    -- false when the terminal/label watermark was not reached within the wait
    state_complete    boolean     NOT NULL,
    -- commit time of the decision; kafka_ts is when Kafka received the record
    decided_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    kafka_ts          timestamptz,
    source_topic      text        NOT NULL,
    source_partition  integer     NOT NULL,
    source_offset     bigint      NOT NULL
);
CREATE INDEX risk_decisions_card_ts ON risk_decisions (card_id, ts);
CREATE INDEX risk_decisions_ts ON risk_decisions (ts);

-- Attention weights, aligned with model_versions.feature_names and with
-- history_tx_ids (position 0 = the most recent earlier transaction of the card).
CREATE TABLE attention_explanations (
    tx_id           text   PRIMARY KEY REFERENCES risk_decisions (tx_id),
    feature_weights real[] NOT NULL,
    history_tx_ids  text[] NOT NULL,
    history_weights real[] NOT NULL
);

-- Where each partition resumes. Written in the same transaction as the rows
-- it covers; `epoch` fences a previous owner after a rebalance.
CREATE TABLE kafka_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    -- newest event time committed on this partition (watermark input)
    max_event_ts   timestamptz,
    epoch          bigint      NOT NULL DEFAULT 0,
    owner          text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE dead_letters (
    id               bigserial   PRIMARY KEY,
    source_topic     text        NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    reason           text        NOT NULL,
    message_key      bytea,
    payload          bytea,
    received_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_topic, source_partition, source_offset)
);

CREATE TABLE labels (
    tx_id            text        PRIMARY KEY,
    is_fraud         boolean     NOT NULL,
    reported_at      timestamptz NOT NULL,
    source_partition integer     NOT NULL,
    source_offset    bigint      NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX labels_reported_at ON labels (reported_at);

-- Analyst views -------------------------------------------------------------

-- Each decision with its three strongest feature reasons and the three past
-- transactions its attention weighed most.
CREATE VIEW decision_reasons AS
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
                 ORDER BY w DESC LIMIT 3) h) AS top_history
  FROM risk_decisions d
  JOIN attention_explanations e USING (tx_id)
  JOIN model_versions m ON m.name = d.model_name AND m.version = d.model_version AND m.sha256 = d.model_sha256;

CREATE VIEW daily_alerts AS
SELECT date_trunc('day', ts)::date AS day, decision, count(*) AS decisions,
       round(avg(score)::numeric, 4) AS avg_score
  FROM risk_decisions
 GROUP BY 1, 2;

-- Precision and recall of alerts (review or decline) against fraud labels,
-- per day of transaction.
CREATE VIEW alert_quality AS
SELECT date_trunc('day', d.ts)::date AS day,
       count(*) FILTER (WHERE d.decision <> 'approve') AS alerts,
       count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud) AS true_alerts,
       count(*) FILTER (WHERE l.is_fraud) AS frauds,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE d.decision <> 'approve'), 0), 4) AS precision,
       round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
             / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS recall
  FROM risk_decisions d
  LEFT JOIN labels l USING (tx_id)
 GROUP BY 1;

-- Which model and threshold set decided, and when.
CREATE VIEW versions_in_force AS
SELECT d.model_name, d.model_version, d.model_sha256, d.threshold_version,
       t.thresholds, t.changed_by,
       min(d.decided_at) AS first_decision, max(d.decided_at) AS last_decision,
       count(*) AS decisions
  FROM risk_decisions d
  JOIN threshold_sets t ON t.version = d.threshold_version
 GROUP BY 1, 2, 3, 4, 5, 6;

-- Roles: the engine writes, analysts read. Created without login; grant them
-- to real users (GRANT riskstream_analyst TO alice).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'riskstream_writer') THEN
        CREATE ROLE riskstream_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'riskstream_analyst') THEN
        CREATE ROLE riskstream_analyst NOLOGIN;
    END IF;
END
$$;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO riskstream_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO riskstream_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO riskstream_analyst;
