//! End-to-end tests against the real local stack (`make stack-up`): Apache
//! Kafka on 127.0.0.1:19092 and PostgreSQL on 127.0.0.1:15432.
//!
//! Each test gets its own topics, consumer group and database, and drives the
//! real `riskstream` binary as child processes, so crashes are real
//! `kill -9`s. Run with `--test-threads=1`: the tests are heavy and share
//! two cores.

mod analyst_sql;
mod attention_parity;
mod backtest;
mod chaos;
mod common;
mod config_errors;
mod console;
mod evaluate;
mod exactly_once;
mod hostile;
mod live_policy;
mod merchant_lm;
mod migrations;
mod model_golden;
mod outages;
mod partitions;
mod poison;
mod privileges;
mod secured;
mod seen;
mod serve;
mod sink;
mod summaries;
mod zoo;
