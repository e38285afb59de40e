//! riskstream: a streaming financial risk engine.
//!
//! Kafka `transactions` → [`ingest`] → [`pipeline`] batches → [`features`]
//! (polars) → [`scoring`] (ONNX Runtime) → [`decision`] → [`sink`] (one
//! Postgres transaction per batch, offsets included). See `docs/ARCHITECTURE.md`.

pub mod attention;
pub mod backtest;
pub mod cli;
pub mod config;
pub mod console;
pub mod decision;
pub mod evaluate;
pub mod event;
pub mod features;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod models;
pub mod onnx;
pub mod pipeline;
pub mod progress;
pub mod registry;
pub mod scoring;
pub mod serve;
pub mod simulate;
pub mod sink;
