//! `riskstream console`: the analysts' web pages, served by the engine's
//! binary and read from Postgres as the reviewer login (`[console] url`).
//!
//! - `/queue`: decisions in review, newest first, filtered and paged;
//! - `/decisions/{tx_id}`: one decision with the policy and model in force,
//!   its feature attention, the card's history weighted by attention, its
//!   labels, and (reviewers) the form that labels it;
//! - `/quality`: alerts, precision and recall per day, per model and policy
//!   version, against `labels_in_force`;
//! - `/what-if`: the backtest of candidate thresholds on the stored
//!   decisions, the sweep's curve with the operating points.
//!
//! Pages are rendered on the server (askama templates in
//! `src/console/templates/`), with no JavaScript. A label is an audit row in
//! `label_reviews` (who, when, what, a note), never an update: see the
//! migration `20261203000001_label_reviews.sql`.

mod auth;
mod charts;
mod decision;
mod quality;
mod queue;
mod what_if;

pub use auth::{hash_password, Role, Viewer};

use crate::config::Config;
use anyhow::{Context, Result};
use askama::Template;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::NaiveDate;
use serde::Deserialize;
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every page handler shares.
pub struct Console {
    pool: PgPool,
    auth: auth::Auth,
    /// The engine's configuration file: the what-if page reads the policy in
    /// it at each request, so an edit shows at once.
    config_path: Option<PathBuf>,
    config: Config,
}

type Shared = Arc<Console>;

/// Serve the console on `[console] listen` until `shutdown`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<()> {
    let c = config
        .console
        .clone()
        .context("the configuration has no [console] section (see config/riskstream.toml)")?;
    let pool = crate::sink::connect(c.url.expose(), 4)
        .await
        .context("connect to Postgres as console.url")?;
    check_database(&pool, &c).await?;
    let console = Arc::new(Console {
        pool,
        auth: auth::Auth::new(&c),
        config_path: config.path.clone(),
        config,
    });
    tokio::spawn(summarise_every_minute(
        console.pool.clone(),
        shutdown.clone(),
    ));
    let app = router(console);
    let listener = tokio::net::TcpListener::bind(&c.listen)
        .await
        .with_context(|| format!("listen on {}", c.listen))?;
    tracing::info!(addr = %listener.local_addr()?, auth = %c.auth, "console serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// Keep the daily summaries the quality pages read current: the days new,
/// labelled or changed since the last minute.
async fn summarise_every_minute(pool: PgPool, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match crate::sink::refresh_summaries(&pool, 7).await {
            Ok(0) => {}
            Ok(days) => tracing::info!(days, "daily summaries refreshed"),
            Err(e) => tracing::warn!(error = %e, "daily summaries not refreshed"),
        }
    }
}

/// Fail at start, not at the first page: the schema must be this binary's
/// (the engine's own check), and a console with reviewers must be able to
/// write reviews.
async fn check_database(pool: &PgPool, c: &crate::config::ConsoleConfig) -> Result<()> {
    crate::sink::check_migrations(pool)
        .await
        .context("console.url's database")?;
    let may_insert: bool =
        sqlx::query_scalar("SELECT has_table_privilege('public.label_reviews', 'INSERT')")
            .fetch_one(pool)
            .await
            .context("read the privileges")?;
    let reviewers = c.users.iter().filter(|u| u.role == "reviewer").count();
    anyhow::ensure!(
        may_insert || reviewers == 0,
        "console.url's login may not insert into label_reviews, but {reviewers} user(s) are reviewers: \
         grant riskstream_reviewer to it (docs/OPERATIONS.md, \"Database roles\")"
    );
    Ok(())
}

fn router(console: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/queue") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/queue", get(queue::page))
        .route("/decisions/{tx_id}", get(decision::page))
        .route("/decisions/{tx_id}/label", post(decision::label))
        .route("/quality", get(quality::page))
        .route("/what-if", get(what_if::page))
        .route("/console.css", get(stylesheet))
        .fallback(|| async { PageError::NotFound("no such page".into()) })
        .with_state(console)
}

/// The header every page shows.
pub struct Nav {
    pub viewer: Option<Viewer>,
    pub here: &'static str,
}

impl Nav {
    fn of(viewer: &Viewer, here: &'static str) -> Nav {
        Nav {
            viewer: Some(viewer.clone()),
            here,
        }
    }
}

/// A page that could not be shown, as an HTML page with the right status.
#[derive(Debug)]
pub enum PageError {
    /// The request's own values are wrong; each problem is named.
    BadRequest(Vec<String>),
    NotFound(String),
    Forbidden(String),
    Internal(anyhow::Error),
}

impl From<sqlx::Error> for PageError {
    fn from(e: sqlx::Error) -> Self {
        PageError::Internal(e.into())
    }
}

impl From<anyhow::Error> for PageError {
    fn from(e: anyhow::Error) -> Self {
        PageError::Internal(e)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: Nav,
    status: StatusCode,
    problems: Vec<String>,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, problems) = match self {
            PageError::BadRequest(p) => (StatusCode::BAD_REQUEST, p),
            PageError::NotFound(why) => (StatusCode::NOT_FOUND, vec![why]),
            PageError::Forbidden(why) => (StatusCode::FORBIDDEN, vec![why]),
            PageError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    vec!["the page failed; the console's log says why".into()],
                )
            }
        };
        let page = ErrorPage {
            nav: Nav {
                viewer: None,
                here: "",
            },
            status,
            problems,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, "error").into_response(),
        }
    }
}

/// A rendered template, or the reason it could not be.
fn html(t: impl Template) -> Result<Html<String>, PageError> {
    t.render()
        .map(Html)
        .map_err(|e| PageError::Internal(anyhow::anyhow!("render: {e}")))
}

/// A form field or query value: empty means absent.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// `from ..= to` from a form, by default the last `default_days` days up to
/// the newest decision's.
async fn date_range(
    c: &Shared,
    from: &Option<String>,
    to: &Option<String>,
    default_days: i64,
) -> Result<(NaiveDate, NaiveDate), PageError> {
    let mut problems = Vec::new();
    let mut date = |name: &str, v: &Option<String>| {
        given(v).and_then(|s| {
            s.parse::<NaiveDate>()
                .map_err(|_| problems.push(format!("{name}: {s:?} is not a date like 2026-12-01")))
                .ok()
        })
    };
    let (from, to) = (date("from", from), date("to", to));
    if !problems.is_empty() {
        return Err(PageError::BadRequest(problems));
    }
    let to = match to {
        Some(t) => t,
        None => {
            let last: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT max(ts) FROM risk_decisions")
                    .fetch_one(&c.pool)
                    .await?;
            last.map_or_else(|| chrono::Utc::now().date_naive(), |t| t.date_naive())
        }
    };
    let from = from.unwrap_or(to - chrono::Days::new(default_days as u64 - 1));
    if from > to {
        return Err(PageError::BadRequest(vec![format!(
            "from ({from}) is after to ({to})"
        )]));
    }
    Ok((from, to))
}

/// The CSRF token of a form must be the viewer's.
fn check_csrf(viewer: &Viewer, sent: &str) -> Result<(), PageError> {
    if sent == viewer.csrf {
        Ok(())
    } else {
        Err(PageError::Forbidden(
            "the form is stale or not from this console: reload the page and try again".into(),
        ))
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Nav,
    failed: bool,
}

async fn login_page(State(c): State<Shared>) -> Response {
    if !c.auth.uses_passwords() {
        return Redirect::to("/queue").into_response();
    }
    html(LoginPage {
        nav: Nav {
            viewer: None,
            here: "login",
        },
        failed: false,
    })
    .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn login(State(c): State<Shared>, Form(f): Form<LoginForm>) -> Response {
    if !c.auth.uses_passwords() {
        return Redirect::to("/queue").into_response();
    }
    let shared = c.clone();
    let token = tokio::task::spawn_blocking(move || shared.auth.login(&f.name, &f.password))
        .await
        .ok()
        .flatten();
    match token {
        Some(token) => {
            let cookie = format!(
                "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                auth::COOKIE,
                c.auth.session_max_age()
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/queue")).into_response()
        }
        None => {
            let page = html(LoginPage {
                nav: Nav {
                    viewer: None,
                    here: "login",
                },
                failed: true,
            });
            (StatusCode::UNAUTHORIZED, page).into_response()
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(c): State<Shared>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, PageError> {
    check_csrf(&viewer, &f.csrf)?;
    if let Some(token) = auth::session_cookie(&headers) {
        c.auth.logout(token);
    }
    let clear = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    Ok(([(header::SET_COOKIE, clear)], Redirect::to("/login")).into_response())
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("templates/console.css"),
    )
}
