//! Model serving: `riskstream serve`, the Open Inference Protocol v2 over
//! HTTP on the model registry ([`v2`] routes and limits, [`protocol`] the
//! wire format and its validation). The engine's own operator endpoints
//! (`/metrics`, `/healthz`, `/readyz`) are [`crate::health::http`].

pub mod protocol;
pub mod v2;
