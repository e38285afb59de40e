//! The operator's HTTP surface: `/metrics` (Prometheus) and `/healthz`.
//!
//! Read-only and cheap; it never touches the pipeline's state beyond the
//! shared metrics and a health flag.
//!
//! Model serving (`riskstream serve`, the Open Inference Protocol v2) lives
//! in [`v2`] with its wire format in [`protocol`].

pub mod protocol;
pub mod v2;

use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// False until the engine is connected and consuming, and after a fatal error.
    pub ready: Arc<AtomicBool>,
}

pub async fn serve(
    addr: std::net::SocketAddr,
    state: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Health>| async move { s.metrics.render() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<Health>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
