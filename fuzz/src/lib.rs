//! The decoder fuzz target's check: `event::contract::check` (in
//! `src/event.rs`, which `make test` also runs on the committed corpus).
//!
//! `src/event.rs` is compiled here from its own file instead of through the
//! `riskstream` crate, which would drag polars, ort and rdkafka into every
//! fuzz build. What the contract asserts is documented there; a violated
//! property panics, which AFL records as a crash.

#[allow(dead_code)]
#[path = "../../src/event.rs"]
mod event;

pub use event::contract::check;
pub use event::{DecodeError, Label, Transaction};
