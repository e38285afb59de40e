//! The operator's HTTP surface: `/metrics` (Prometheus), `/healthz`
//! (liveness) and `/readyz` (readiness, with its reasons; see [`super`]).
//!
//! Read-only and cheap; it never touches the pipeline's state beyond the
//! shared metrics and health. (Model serving, `riskstream serve`, is
//! [`crate::serve`].)

use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    pub health: Arc<super::Health>,
}

pub async fn serve(
    addr: std::net::SocketAddr,
    state: Endpoints,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Endpoints>| async move { s.metrics.render() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<Endpoints>| async move {
                match s.health.live() {
                    Ok(()) => (StatusCode::OK, "ok\n".to_string()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {e}\n")),
                }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<Endpoints>| async move {
                match s.health.ready() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n{}\n", why.join("\n")),
                    ),
                }
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
