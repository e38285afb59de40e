//! The commands behind `riskstream …`, as library functions so tests and
//! tools can call them. Each returns the process exit code.

use crate::config::{Config, ConfigError, KafkaConfig};
use crate::metrics::Metrics;
use crate::scoring::Scorer;
use crate::simulate::{self, SimConfig, Simulator};
use crate::{pipeline, registry, serve, sink};
use anyhow::{Context, Result};
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `riskstream run`: the engine, `/metrics` and `/healthz`, until a signal.
/// The first SIGINT/SIGTERM finishes the batch in hand; a second exits at once.
pub async fn run(config: &Config) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    // Stalled: records held and nothing committed for longer than a batch
    // may legitimately wait for the watermark, twice over.
    let stall_ms = (2 * config.pipeline.state_wait_ms).max(60_000) as i64;
    let health = Arc::new(crate::health::Health::new(stall_ms, 60_000));
    if !config.server.listen.is_empty() {
        let addr = config.server.listen.parse().context("server.listen")?;
        let state = crate::health::http::Endpoints {
            metrics: metrics.clone(),
            health: health.clone(),
        };
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::health::http::serve(addr, state, token).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    match pipeline::run(config.clone(), metrics, health.clone(), shutdown).await {
        Ok(summary) => {
            tracing::info!(?summary, "engine stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            health.set_fatal(&e.to_string());
            tracing::error!(error = %e, "engine failed");
            Err(e).context("riskstream run")
        }
    }
}

/// `riskstream serve`: every model under `--models` over the Open Inference
/// Protocol v2, hot-swapped as its directory changes, until SIGINT/SIGTERM.
pub async fn serve_models(opts: serve::v2::Options) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    serve::v2::serve(opts, shutdown)
        .await
        .context("riskstream serve")?;
    Ok(ExitCode::SUCCESS)
}

/// `riskstream summarise`: `refresh_summaries()` (migration
/// `20261203000003_daily_summaries.sql`) as the engine's login.
pub async fn summarise(config: &Config, recheck_days: i32) -> Result<ExitCode> {
    let pool = sink::connect(config.postgres.url.expose(), 1).await?;
    let started = std::time::Instant::now();
    let days = sink::refresh_summaries(&pool, recheck_days).await?;
    println!(
        "{days} day(s) summarised in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `riskstream partitions`: create the month partitions of today and of
/// `[retention] create_ahead_days` after it (as the engine's login), then,
/// with `[retention] keep_days`, drop the months that ended before the
/// first kept day's month began (as `postgres.migrate_url`: only the owner
/// deletes decisions).
pub async fn partitions(config: &Config) -> Result<ExitCode> {
    let r = &config.retention;
    let today = chrono::Utc::now().date_naive();
    let ahead: Vec<chrono::NaiveDate> = (0..=r.create_ahead_days)
        .map(|d| today + chrono::Days::new(u64::from(d)))
        .collect();
    let pool = sink::connect(config.postgres.url.expose(), 1).await?;
    let created = sink::partitions::create(&pool, &ahead)
        .await
        .context("create month partitions as postgres.url")?;
    println!(
        "{created} partition(s) created for {} .. {}",
        ahead[0],
        ahead[ahead.len() - 1]
    );
    let Some(keep) = r.keep_days else {
        println!("retention.keep_days not set: everything is kept");
        return Ok(ExitCode::SUCCESS);
    };
    let cutoff = today - chrono::Days::new(u64::from(keep) - 1);
    let (url, key) = config.postgres.owner_login();
    let owner = sink::connect(url.expose(), 1)
        .await
        .with_context(|| format!("connect as {key}"))?;
    let dropped = sink::partitions::drop_before(&owner, cutoff)
        .await
        .with_context(|| {
            format!(
                "drop the months before {cutoff} as {key}: it must log in as a member of {}",
                sink::schema::OWNER_ROLE
            )
        })?;
    let kept_from = sink::partitions::first_of_month(cutoff);
    let month = |d: &chrono::NaiveDate| d.format("%Y-%m").to_string();
    match (dropped.first(), dropped.last()) {
        (Some(first), Some(last)) => println!(
            "{} month(s) dropped ({} .. {}); kept from {kept_from} (keep_days {keep}: whole months before {cutoff})",
            dropped.len(),
            month(first),
            month(last)
        ),
        _ => println!("nothing before {kept_from} to drop (keep_days {keep}: whole months before {cutoff})"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `riskstream console`: the analysts' pages (see [`crate::console`]) until
/// SIGINT/SIGTERM.
pub async fn console(config: Config) -> Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    crate::console::serve(config, shutdown)
        .await
        .context("riskstream console")?;
    Ok(ExitCode::SUCCESS)
}

/// `riskstream console --hash-password`: the first line of stdin (the
/// password) as an argon2id PHC string for `[[console.users]] password_hash`.
pub fn hash_password() -> Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "the password on stdin is empty");
    println!("{}", crate::console::hash_password(password)?);
    Ok(ExitCode::SUCCESS)
}

/// `riskstream models list`: load every model under `root` as `serve` would
/// and show what it would serve.
pub async fn list_models(root: &Path, json: bool) -> Result<ExitCode> {
    let root = root.to_owned();
    let statuses = tokio::task::spawn_blocking(move || {
        let metrics = Arc::new(crate::metrics::ServeMetrics::new());
        let registry = registry::Registry::new(&root, registry::LoadOptions::default(), metrics);
        registry.scan(false);
        registry.statuses()
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
        return Ok(ExitCode::SUCCESS);
    }
    for m in &statuses {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<8} {:<20} {:<11} {}",
            or_dash(&m.name),
            or_dash(&m.version),
            or_dash(&m.task),
            m.state,
            m.dir
        );
        let list = |specs: &[crate::onnx::manifest::TensorSpec]| {
            specs
                .iter()
                .map(registry::describe)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("    inputs:  {}", list(&m.inputs));
        println!("    outputs: {}", list(&m.outputs));
        if let Some(reason) = &m.reason {
            println!("    reason:  {reason}");
        }
    }
    if statuses.is_empty() {
        println!("no model directories (with a manifest.json) found");
    }
    Ok(ExitCode::SUCCESS)
}

/// `riskstream models verify [DIR]`: every model under DIR (or DIR itself):
/// manifest, sha256, IO against the graph, golden outputs. Non-zero exit
/// if any problem, each named.
pub async fn verify_models(dir: &Path) -> Result<ExitCode> {
    let owned = dir.to_owned();
    let results = tokio::task::spawn_blocking(move || registry::verify(&owned))
        .await?
        .with_context(|| format!("read {}", dir.display()))?;
    if results.is_empty() {
        eprintln!(
            "{}: no model directories (with a manifest.json)",
            dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut ok = true;
    for result in results {
        match result {
            Ok(m) => println!(
                "{}: {} v{} sha256 {} ok ({}; batching {})",
                m.dir.display(),
                m.name(),
                m.version(),
                m.manifest.sha256,
                match m.golden_rows {
                    Some(rows) => format!("golden.json: {rows} rows match"),
                    None => "no golden.json".into(),
                },
                if m.batching() { "on" } else { "off" }
            ),
            Err(e) => {
                ok = false;
                for problem in &e.problems {
                    eprintln!("{}: {problem}", e.dir.display());
                }
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `riskstream models classify`: label, probability and the `top` most
/// attended tokens of each text.
pub async fn classify_text(model: &Path, texts: &[String], top: usize) -> Result<ExitCode> {
    use crate::models::text::{render, TextClassifier};
    let dir = model.to_owned();
    let classifier = tokio::task::spawn_blocking(move || TextClassifier::load(&dir)).await??;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    for (text, c) in texts.iter().zip(classifier.classify(&texts).await?) {
        print!("{}", render(text, &c, top));
    }
    Ok(ExitCode::SUCCESS)
}

/// `riskstream models translate`: the digits of a written amount (greedy, or
/// beam search with `beam`) and the alignment of each digit over the words.
pub async fn translate(
    encoder: &Path,
    decoder: &Path,
    text: &str,
    beam: Option<usize>,
) -> Result<ExitCode> {
    use crate::models::seq2seq::{render, Search, Translator};
    let (e, d) = (encoder.to_owned(), decoder.to_owned());
    let translator = tokio::task::spawn_blocking(move || Translator::load(&e, &d)).await??;
    let search = beam.map_or(Search::Greedy, Search::Beam);
    print!(
        "{}",
        render(text, &translator.translate(text, search).await?)
    );
    Ok(ExitCode::SUCCESS)
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutting down: finishing the current batch (signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    eprintln!("riskstream: second signal, exiting now (uncommitted work is replayed on restart)");
    std::process::exit(130);
}

/// `riskstream check-config`: every problem in the file, then the models.
pub fn check_config(path: &Path) -> Result<ExitCode> {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e @ ConfigError::Invalid { .. })
        | Err(e @ ConfigError::Parse { .. })
        | Err(e @ ConfigError::Read { .. }) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if !verify_fraud_model("model", &config.model.dir, "") {
        return Ok(ExitCode::FAILURE);
    }
    if let Some(shadow) = &config.shadow {
        let note = " (shadow: scored beside the model, never deciding)";
        if !verify_fraud_model("shadow", &shadow.dir, note) {
            return Ok(ExitCode::FAILURE);
        }
    }
    let manifest = crate::onnx::Manifest::read(&config.model.dir)?;
    match crate::decision::Policy::compile(
        &config.thresholds,
        &config.rules,
        &manifest.feature_names,
    ) {
        Ok(policy) => println!(
            "thresholds and {} rule(s): ok (policy sha256 {})",
            policy.rules.rules().len(),
            policy.content_sha256()
        ),
        Err(problems) => {
            let path = path.to_owned();
            eprintln!("{}", ConfigError::Invalid { path, problems });
            return Ok(ExitCode::FAILURE);
        }
    }
    if let Some(lm) = &config.language_model {
        let opts = registry::LoadOptions {
            intra_threads: lm.intra_threads,
            ..Default::default()
        };
        match crate::models::lm::MerchantLm::load(&lm.dir, &opts) {
            Ok(m) => println!(
                "{}: {} v{} sha256 {} ok (language model, mcc_surprise)",
                lm.dir.display(),
                m.model().name(),
                m.model().version(),
                m.model().manifest.sha256
            ),
            Err(e) => {
                eprintln!("language_model.dir: {e}");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    println!("{}: ok", path.display());
    Ok(ExitCode::SUCCESS)
}

/// A fraud model of `[section]` opens as the engine opens it (sha256, IO
/// contract, golden outputs); prints what it is, or the problem by its key.
fn verify_fraud_model(section: &str, dir: &Path, note: &str) -> bool {
    match Scorer::open(dir, 1, 1, 1) {
        Ok(s) => {
            let m = &s.manifest;
            println!(
                "{}: {} v{} sha256 {} ok{note}",
                dir.display(),
                m.name,
                m.version,
                m.sha256
            );
            true
        }
        Err(e) => {
            eprintln!("{section}.dir: {e}");
            false
        }
    }
}

/// `riskstream evaluate`: the table on stdout and, with `json`, the same
/// numbers in a file. Reading, featurizing and scoring run on a blocking thread.
pub async fn evaluate(opts: crate::evaluate::Options, json: Option<&Path>) -> Result<ExitCode> {
    let report = tokio::task::spawn_blocking(move || crate::evaluate::run(&opts)).await??;
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `riskstream migrate`: apply the migrations as `postgres.migrate_url` (a
/// member of the schema's owner role), or `postgres.url` without it.
pub async fn migrate(config: &Config) -> Result<ExitCode> {
    let (url, key) = config.postgres.owner_login();
    let pool = sink::connect(url.expose(), 2)
        .await
        .with_context(|| format!("connect as {key}"))?;
    let done = sink::migrate(&pool).await.with_context(|| {
        format!(
            "migrate as {key}: it must log in as a member of {owner} (or a superuser), \
             in a database {owner} owns or may create in",
            owner = sink::schema::OWNER_ROLE
        )
    })?;
    println!(
        "migrations applied: schema at version {} (as {})",
        done.version, done.role
    );
    Ok(ExitCode::SUCCESS)
}

/// `riskstream simulate`: to a file, or to Kafka (creating the topics).
pub async fn simulate(
    world: SimConfig,
    out: Option<&Path>,
    kafka: Option<&KafkaConfig>,
    rate: Option<f64>,
) -> Result<ExitCode> {
    let n = world.max_transactions;
    let sim = Simulator::new(world);
    if let Some(path) = out {
        let s = simulate::write_file(path, sim)?;
        println!(
            "wrote {} transactions ({} fraud) to {}",
            s.transactions,
            s.frauds,
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let k = kafka.context("no Kafka configuration")?.clone();
    crate::ingest::topics::ensure_topics(
        &crate::ingest::client::base(&k),
        &[
            (&k.transactions_topic, k.partitions),
            (&k.labels_topic, 1),
            (&k.dlq_topic, 1),
        ],
    )
    .await?;
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let produced = tokio::task::spawn_blocking(move || {
        let target = simulate::kafka::Target {
            client: crate::ingest::client::base(&k),
            transactions_topic: &k.transactions_topic,
            labels_topic: &k.labels_topic,
            rate,
            progress,
        };
        simulate::kafka::produce(sim, n.map(|n| n as u64), &target)
    })
    .await??;
    println!(
        "produced {} transactions and {} labels in {:.1}s ({:.0} tx/s)",
        produced.transactions,
        produced.labels,
        produced.elapsed.as_secs_f64(),
        produced.transactions as f64 / produced.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `riskstream report`: what an analyst would look at first.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub decisions: Vec<OutcomeCount>,
    pub dead_letters: i64,
    pub labels: i64,
    pub alerts: i64,
    pub alerts_labelled_fraud: i64,
    pub frauds: i64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub top_declines: Vec<ExplainedDecline>,
}

#[derive(Debug, serde::Serialize)]
pub struct OutcomeCount {
    pub decision: String,
    pub count: i64,
    pub avg_score: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct ExplainedDecline {
    pub tx_id: String,
    pub card_id: String,
    pub amount: String,
    pub channel: Option<String>,
    pub score: f32,
    pub top_features: Vec<String>,
    pub top_history: Vec<String>,
}

/// `riskstream report`: the summary as a table, or as JSON with `json`.
pub async fn report(config: &Config, json: bool) -> Result<ExitCode> {
    let pool = sink::connect(config.postgres.url.expose(), 2).await?;
    let decisions = sqlx::query(
        "SELECT decision, count(*), avg(score)::float8 FROM risk_decisions GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| OutcomeCount {
        decision: r.get(0),
        count: r.get(1),
        avg_score: r.get(2),
    })
    .collect();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await }
    };
    let dead_letters = count("SELECT count(*) FROM dead_letters").await?;
    let labels = count("SELECT count(*) FROM labels").await?;
    let (alerts, hits, frauds): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT sum(alerts)::bigint, sum(true_alerts)::bigint, sum(frauds)::bigint FROM alert_quality",
    )
    .fetch_one(&pool)
    .await?;
    let (alerts, hits, frauds) = (alerts.unwrap_or(0), hits.unwrap_or(0), frauds.unwrap_or(0));
    let top_declines = sqlx::query(
        "SELECT tx_id, card_id, amount::text, channel, score, coalesce(top_features, '{}'), coalesce(top_history, '{}')
           FROM decision_reasons WHERE decision = 'decline' ORDER BY score DESC, tx_id LIMIT 5",
    )
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| ExplainedDecline {
        tx_id: r.get(0),
        card_id: r.get(1),
        amount: r.get(2),
        channel: r.get(3),
        score: r.get(4),
        top_features: r.get(5),
        top_history: r.get(6),
    })
    .collect();
    let report = Report {
        decisions,
        dead_letters,
        labels,
        alerts,
        alerts_labelled_fraud: hits,
        frauds,
        precision: (alerts > 0).then(|| hits as f64 / alerts as f64),
        recall: (frauds > 0).then(|| hits as f64 / frauds as f64),
        top_declines,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Decisions by outcome:");
    for o in &report.decisions {
        println!(
            "  {:<8} {:>8}  avg score {:.4}",
            o.decision, o.count, o.avg_score
        );
    }
    println!("Dead letters: {dead_letters}   Labels received: {labels}");
    println!("\nAlert quality (days with labelled frauds):");
    println!(
        "  alerts {alerts}, of which labelled fraud {hits} (precision {:.3}); frauds caught {hits}/{frauds} (recall {:.3})",
        report.precision.unwrap_or(0.0),
        report.recall.unwrap_or(0.0)
    );
    println!("\nHighest-scored declines with their top reasons:");
    for d in &report.top_declines {
        println!(
            "  {} card {} amount {} {} score {:.3}\n      features: {}\n      history:  {}",
            d.tx_id,
            d.card_id,
            d.amount,
            d.channel.as_deref().unwrap_or(""),
            d.score,
            d.top_features.join(", "),
            d.top_history.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct BacktestArgs {
    /// First day (YYYY-MM-DD, UTC) of decisions to read; default: the first stored.
    #[arg(long)]
    pub from: Option<chrono::NaiveDate>,
    /// Last day, included; default: the last stored.
    #[arg(long)]
    pub to: Option<chrono::NaiveDate>,
    /// A config file whose [thresholds] and [rules] are the candidate
    /// (an edited copy of the engine's); default: the --config file itself.
    #[arg(long)]
    pub candidate: Option<PathBuf>,
    /// The candidate's review threshold instead of its file's.
    #[arg(long)]
    pub review: Option<f32>,
    /// The candidate's decline threshold instead of its file's.
    #[arg(long)]
    pub decline: Option<f32>,
    /// Also sweep the review threshold (precision / recall / alerts per day).
    #[arg(long)]
    pub sweep: bool,
    /// Write the sweep as an SVG picture here (implies --sweep).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A candidate fraud model directory: the range is replayed through the
    /// featurizer and scored by the champion ([model]) and this model, side
    /// by side (AUC, AP, card precision@100, alerts, decisions that flip).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Read with this Postgres URL (an analyst's login); default: postgres.url.
    #[arg(long, env = "RISKSTREAM_BACKTEST_URL", hide_env_values = true)]
    pub url: Option<String>,
}

/// `riskstream backtest`: see [`crate::backtest`].
pub async fn backtest(config: &Config, args: &BacktestArgs) -> Result<ExitCode> {
    let candidate = match &args.candidate {
        Some(path) => Config::load(path)?,
        None => config.clone(),
    };
    let (policy, inputs) = crate::backtest::candidate(candidate, args.review, args.decline)?;
    let url = args.url.as_deref().unwrap_or(config.postgres.url.expose());
    let pool = sink::connect(url, 2).await?;
    let loaded = crate::backtest::load(&pool, args.from, args.to, inputs, !args.json).await?;
    let sweep = args.sweep || args.plot.is_some();
    let replay = match &args.model {
        None => None,
        Some(dir) => {
            let (start, end) = crate::backtest::bounds(args.from, args.to);
            let lookback = crate::backtest::model::lookback_days(config.features.label_delay_days);
            let rows = crate::backtest::model::load(
                &pool,
                start.map(|s| s - chrono::Duration::days(lookback)),
                end,
            )
            .await?;
            Some((rows, start, dir.clone()))
        }
    };
    let (champion_dir, delay) = (config.model.dir.clone(), config.features.label_delay_days);
    let report = tokio::task::spawn_blocking(move || -> Result<crate::backtest::Report> {
        let mut report = crate::backtest::run(&loaded, &policy, sweep);
        if let Some((rows, start, dir)) = replay {
            let days = loaded.days;
            let open = |d: &Path| {
                Scorer::open(d, 1, 2, 512).with_context(|| format!("model {}", d.display()))
            };
            let (champion, challenger) = (open(&champion_dir)?, open(&dir)?);
            report.model = Some(crate::backtest::model::compare(
                &rows,
                start,
                days,
                delay,
                &champion,
                &challenger,
                &policy,
            )?);
        }
        Ok(report)
    })
    .await??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, crate::backtest::plot::svg(&report))
            .with_context(|| format!("write {}", path.display()))?;
        if !args.json {
            println!("\nSweep picture: {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
