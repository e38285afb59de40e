//! `riskstream serve`: every model of the registry over HTTP with the Open
//! Inference Protocol v2 (KServe v2 / Triton), plus `/metrics`.
//!
//! Owns request limits (body size, batch size, per-request timeout) and the
//! mapping of every failure to a 4xx/5xx JSON `{"error": "..."}`. Handlers
//! never run inference or large decodes on an async worker: the registry's
//! models run on the blocking pool, and bodies over 64 KiB are decoded there.

use super::protocol::{self, Signature};
use crate::metrics::ServeMetrics;
use crate::onnx::manifest::TensorSpec;
use crate::registry::{BatchOptions, InferError, LoadOptions, LoadedModel, Registry};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Bodies larger than this are decoded on the blocking pool.
const INLINE_DECODE_BYTES: usize = 64 * 1024;
const BINARY_HEADER: &str = "inference-header-content-length";
/// A refused body is read and dropped up to this size before answering 413.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// `riskstream serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Models root: every subdirectory with a manifest.json is served.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Most rows per ONNX Runtime run, and per request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_batch: u32,
    /// How long a request waits for others to batch with once a session is
    /// free (milliseconds). 0: run at once with whatever queued meanwhile;
    /// batches still form while every session is busy.
    #[arg(long, default_value_t = 0)]
    pub max_delay_ms: u64,
    /// Requests queued per model before new ones get 503.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// Per-request deadline, from the first byte to the answer (milliseconds).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// Largest request body (bytes); larger ones get 413.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// ONNX Runtime sessions per model (concurrent runs per model).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub sessions: u32,
    /// Threads inside one ONNX Runtime run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub intra_threads: u32,
    /// How often the models root is checked for new, changed or removed
    /// models (milliseconds; 0 disables hot swap).
    #[arg(long, default_value_t = 2000)]
    pub poll_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            models: "models".into(),
            listen: ([127, 0, 0, 1], 8000).into(),
            max_batch: 64,
            max_delay_ms: 0,
            queue: 1024,
            timeout_ms: 10_000,
            max_body_bytes: 16 * 1024 * 1024,
            sessions: 2,
            intra_threads: 1,
            poll_ms: 2000,
        }
    }
}

impl Options {
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            sessions: self.sessions as usize,
            intra_threads: self.intra_threads as usize,
            batch: BatchOptions {
                max_batch: self.max_batch as usize,
                max_delay: Duration::from_millis(self.max_delay_ms),
                queue: self.queue as usize,
            },
        }
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    metrics: Arc<ServeMetrics>,
    timeout: Duration,
    max_body: usize,
    max_delay: Duration,
}

/// Bind, load every model, serve until `shutdown`. The listener is bound
/// before the models load, so `/v2/health/live` answers at once and
/// `/v2/health/ready` once the first load is done.
pub async fn serve(opts: Options, shutdown: CancellationToken) -> std::io::Result<()> {
    if !opts.models.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("models root {} is not a directory", opts.models.display()),
        ));
    }
    let metrics = Arc::new(ServeMetrics::new());
    let registry = Arc::new(Registry::new(
        &opts.models,
        opts.load_options(),
        metrics.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(opts.listen).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, models = %opts.models.display(), "serving the Open Inference Protocol v2");
    let loader = registry.clone();
    let poll = Duration::from_millis(opts.poll_ms);
    let token = shutdown.clone();
    tokio::spawn(async move {
        let first = loader.clone();
        match tokio::task::spawn_blocking(move || first.scan(false)).await {
            Ok(report) => tracing::info!(
                loaded = report.loaded.len(),
                failed = report.failed.len(),
                "models loaded"
            ),
            Err(e) => tracing::error!(error = %e, "loading the models failed"),
        }
        if !poll.is_zero() {
            loader.watch(poll, token).await;
        }
    });
    let state = AppState {
        registry,
        metrics,
        timeout: Duration::from_millis(opts.timeout_ms),
        max_body: opts.max_body_bytes,
        max_delay: Duration::from_millis(opts.max_delay_ms),
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route(
            "/v2/health/live",
            get(|| async { Json(json!({"live": true})) }),
        )
        .route("/v2/health/ready", get(server_ready))
        .route(
            "/v2/repository/index",
            get(repository_index).post(repository_index),
        )
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/config", get(model_config))
        .route(
            "/v2/models/{name}/versions/{version}/config",
            get(model_config_v),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { s.metrics.render() }),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint (see /v2)") })
        .with_state(state)
}

/// A refusal: its status and a message naming the problem, sent as
/// `{"error": "..."}` (what Triton clients read).
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError(status, message.into()).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "riskstream",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_repository"],
    }))
}

async fn server_ready(State(s): State<AppState>) -> Response {
    let ready = s.registry.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn repository_index(State(s): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = s
        .registry
        .statuses()
        .into_iter()
        .map(|m| {
            json!({
                "name": m.name.unwrap_or(m.dir),
                "version": m.version,
                "state": m.state,
                "reason": m.reason.unwrap_or_default(),
            })
        })
        .collect();
    Json(Value::Array(models))
}

/// The model served under `name`, if `version` (when given) is the one served.
fn find(s: &AppState, name: &str, version: Option<&str>) -> Result<Arc<LoadedModel>, ApiError> {
    let Some(model) = s.registry.get(name) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("unknown model {name:?}; serving {:?}", s.registry.names()),
        ));
    };
    match version {
        Some(v) if v != model.version() => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "model {name:?} version {v:?} is not served (serving version {:?})",
                model.version()
            ),
        )),
        _ => Ok(model),
    }
}

fn v2_tensor(spec: &TensorSpec) -> Value {
    json!({
        "name": spec.name,
        "datatype": spec.dtype().map_or("UNKNOWN", |d| d.v2_name()),
        "shape": spec.shape,
    })
}

fn metadata(s: &AppState, name: &str, version: Option<&str>) -> Response {
    match find(s, name, version) {
        Err(e) => e.into_response(),
        Ok(m) => Json(json!({
            "name": m.name(),
            "versions": [m.version()],
            "platform": "onnxruntime_onnx",
            "inputs": m.inputs.iter().map(v2_tensor).collect::<Vec<_>>(),
            "outputs": m.outputs.iter().map(v2_tensor).collect::<Vec<_>>(),
        }))
        .into_response(),
    }
}

async fn model_metadata(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    metadata(&s, &name, None)
}

async fn model_metadata_v(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    metadata(&s, &name, Some(&version))
}

fn ready(s: &AppState, name: &str, version: Option<&str>) -> Response {
    match find(s, name, version) {
        Err(e) => e.into_response(),
        Ok(m) => {
            Json(json!({"name": m.name(), "version": m.version(), "ready": true})).into_response()
        }
    }
}

async fn model_ready(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    ready(&s, &name, None)
}

async fn model_ready_v(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    ready(&s, &name, Some(&version))
}

/// Triton's model configuration, as far as it applies (clients such as
/// `perf_analyzer` read `max_batch_size` from it).
fn config(s: &AppState, name: &str, version: Option<&str>) -> Response {
    let m = match find(s, name, version) {
        Err(e) => return e.into_response(),
        Ok(m) => m,
    };
    let batched = m.batch_dim();
    let tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|t| {
                let dims = if batched { &t.shape[1..] } else { &t.shape[..] };
                json!({
                    "name": t.name,
                    "data_type": format!("TYPE_{}", t.dtype().map_or("INVALID", |d| d.v2_name())),
                    "dims": dims,
                })
            })
            .collect()
    };
    let mut config = json!({
        "name": m.name(),
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": if batched { m.max_batch() } else { 0 },
        "input": tensors(&m.inputs),
        "output": tensors(&m.outputs),
    });
    if m.batching() {
        config["dynamic_batching"] =
            json!({"max_queue_delay_microseconds": s.max_delay.as_micros() as u64});
    }
    Json(config).into_response()
}

async fn model_config(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    config(&s, &name, None)
}

async fn model_config_v(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    config(&s, &name, Some(&version))
}

async fn infer(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_counted(s, name, None, headers, body).await
}

async fn infer_v(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_counted(s, name, Some(version), headers, body).await
}

/// Decrements the in-flight gauge however the request ends (even if the
/// client goes away and the handler future is dropped).
struct InFlight(prometheus::IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The deadline, the metrics and the in-flight gauge around [`infer_inner`].
async fn infer_counted(
    s: AppState,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // Only served names become label values: bad clients cannot grow the series.
    let label = if s.registry.get(&name).is_some() {
        name.clone()
    } else {
        "_unknown".into()
    };
    let gauge = s.metrics.in_flight.with_label_values(&[&label]);
    gauge.inc();
    let _in_flight = InFlight(gauge);
    let response = match tokio::time::timeout(
        s.timeout,
        infer_inner(&s, &name, version.as_deref(), &headers, body),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "model {name:?}: no answer within {} ms (--timeout-ms)",
                s.timeout.as_millis()
            ),
        ),
    };
    s.metrics
        .requests
        .with_label_values(&[&label, response.status().as_str()])
        .inc();
    s.metrics
        .request_seconds
        .with_label_values(&[&label])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn infer_inner(
    s: &AppState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let model = match find(s, name, version) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        if encoding.as_bytes() != b"identity" {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding {encoding:?} is not supported; send the body uncompressed"
                ),
            );
        }
    }
    let header_len = match headers.get(BINARY_HEADER) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("Inference-Header-Content-Length {v:?} is not a byte count"),
                )
            }
        },
    };
    let bytes = match read_body(headers, body, s.max_body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let decoded = if bytes.len() > INLINE_DECODE_BYTES {
        let m = model.clone();
        tokio::task::spawn_blocking(move || protocol::decode(Signature::of(&m), &bytes, header_len))
            .await
            .unwrap_or_else(|e| Err(format!("decoding failed: {e}")))
    } else {
        protocol::decode(Signature::of(&model), &bytes, header_len)
    };
    let decoded = match decoded {
        Ok(d) => d,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let outputs = match model.infer(decoded.inputs).await {
        Ok(o) => o,
        Err(e) => {
            let status = match e {
                InferError::Rejected { .. } => StatusCode::BAD_REQUEST,
                InferError::Overloaded(_) | InferError::Unavailable(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                InferError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(status, e.to_string());
        }
    };
    let selected: Vec<(&TensorSpec, &crate::registry::Tensor, bool)> = decoded
        .outputs
        .iter()
        .map(|&(k, binary)| (&model.outputs[k], &outputs[k], binary))
        .collect();
    let (body, header_len) = protocol::encode(
        model.name(),
        model.version(),
        decoded.id.as_deref(),
        &selected,
    );
    let mut response = Response::new(Body::from(body));
    let content_type = if header_len.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    };
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(n) = header_len {
        response
            .headers_mut()
            .insert(BINARY_HEADER, HeaderValue::from(n));
    }
    response
}

/// The body, refusing with 413 as soon as it is known to exceed `max`
/// (from Content-Length, or while streaming a chunked body).
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || {
        ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds {max} bytes (--max-body-bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > max) {
        drain(&mut stream).await;
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        })?;
        if bytes.len() + chunk.len() > max {
            drain(&mut stream).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Read and discard a refused body (up to [`DRAIN_BYTES`]), so a client that
/// writes the whole body before reading gets the 413 instead of a reset.
async fn drain(stream: &mut axum::body::BodyDataStream) {
    let mut drained = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        drained += chunk.len();
        if drained > DRAIN_BYTES {
            break;
        }
    }
}
