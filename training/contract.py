"""The featurizer's contract with the models, as the Rust engine defines it
(src/features/mod.rs): tabular feature names in input order and the
history sequence layout. Shared by training and the synthetic data generator."""

FEATURE_NAMES = [
    "amount_log",
    "card_count_1d", "card_avg_amount_1d",
    "card_count_7d", "card_avg_amount_7d",
    "card_count_30d", "card_avg_amount_30d",
    "terminal_count_1d", "terminal_risk_1d",
    "terminal_count_7d", "terminal_risk_7d",
    "terminal_count_30d", "terminal_risk_30d",
    "is_night", "is_weekend", "is_ecom",
    "amount_ratio_30d", "card_count_10m",
    "secs_since_prev_log", "country_change_1h",
]
HISTORY_FIELDS = ["amount_log", "gap_log", "same_terminal", "same_country", "is_ecom", "hour_frac"]
K = 16  # history length: past transactions per card, position 0 = most recent
