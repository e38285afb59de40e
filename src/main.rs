//! The `riskstream` command line: parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use riskstream::config::{Config, EventTimeConfig};
use riskstream::features::offline;
use riskstream::simulate::SimConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "riskstream",
    version,
    about = "Streaming financial risk engine"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        global = true,
        env = "RISKSTREAM_CONFIG",
        default_value = "config/riskstream.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the streaming engine until SIGINT/SIGTERM.
    Run,
    /// Validate the configuration and the model it names; print every problem.
    CheckConfig,
    /// Apply the Postgres migrations.
    Migrate,
    /// Generate a realistic labelled transaction stream, to Kafka or a file.
    Simulate(SimulateArgs),
    /// Featurize a labelled transaction file with the online featurizer (training data).
    /// Rows the stream would reject are reported on stderr and set aside.
    Features {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        label_delay_days: i64,
        /// Past transactions per row in `history` / `history_mask` (the online engine uses 16).
        #[arg(long, default_value_t = riskstream::features::HISTORY_LEN,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        history_len: usize,
        /// Stop at the first row the stream would reject, writing nothing;
        /// by default such rows are left out and written to `<out>.rejected.jsonl`.
        #[arg(long)]
        strict: bool,
        /// Reject rows whose time is more than this far ahead of this machine's
        /// clock, as the stream does (`event_time.max_future_secs`); 0: no bound.
        #[arg(long, default_value_t = EventTimeConfig::default().max_future_secs,
              value_parser = clap::value_parser!(i64).range(0..))]
        max_future_secs: i64,
    },
    /// Handbook-protocol metrics (AUC ROC, average precision, card precision@100)
    /// of a fraud model on a labelled transaction file.
    Evaluate(EvaluateArgs),
    /// Serve every model under --models over HTTP (Open Inference Protocol v2,
    /// /metrics), with dynamic batching and hot swap.
    Serve(riskstream::serve::v2::Options),
    /// Model directories: list them, verify checksums, IO and golden outputs.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Summarize what landed in Postgres: decisions by outcome and a few explained declines.
    Report {
        /// The same figures as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g.
    /// `riskstream completions bash > /etc/bash_completion.d/riskstream`.
    Completions { shell: clap_complete::Shell },
    /// What a candidate policy (thresholds and rules) would have decided on
    /// the stored decisions of a date range, beside what was decided: alerts
    /// per day, review queue, precision, recall, amounts, each rule's firing.
    Backtest(riskstream::cli::BacktestArgs),
    /// Summarise the days for the analyst views (daily_alerts, alert_quality,
    /// versions_in_force, shadow_comparison): the days new, labelled or
    /// changed since the last time. Run it on a timer (the console also does).
    Summarise {
        /// Also re-count this many days before the last summarised one for
        /// late decisions.
        #[arg(long, default_value_t = 7)]
        recheck_days: i32,
    },
    /// Create the month partitions of the decision tables ahead
    /// ([retention] create_ahead_days) and drop the months past [retention]
    /// keep_days (as postgres.migrate_url). Run it daily on a timer.
    Partitions,
    /// The analysts' web console on [console] listen: review queue, decisions
    /// with their explanations, labelling, alert quality, what-if.
    Console {
        /// Read a password on stdin and print its argon2 hash for
        /// [[console.users]] password_hash, instead of serving.
        #[arg(long)]
        hash_password: bool,
    },
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// About this many transactions.
    #[arg(long, default_value_t = 50_000)]
    transactions: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write to this file (.jsonl or .parquet) instead of Kafka.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Transactions per second to Kafka (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Customers (one card each) making the transactions, over as many days
    /// as they take (default: sized from --transactions, ~90 days).
    #[arg(long)]
    cards: Option<usize>,
}

#[derive(clap::Args)]
struct EvaluateArgs {
    /// Model directory (manifest.json + model.onnx).
    #[arg(long, default_value = "models/fraud-attention")]
    model: PathBuf,
    /// Labelled transactions (.parquet, .jsonl or .csv) with is_fraud (and scenario).
    #[arg(long)]
    data: PathBuf,
    /// First test day (YYYY-MM-DD, UTC) of fold 0; default: the last full days of the file.
    #[arg(long)]
    test_start: Option<chrono::NaiveDate>,
    #[arg(long, default_value_t = 7)]
    test_days: i64,
    /// Days between the training window and the test window.
    #[arg(long, default_value_t = 7)]
    delay_days: i64,
    /// Training window length; its frauds mark cards as known compromised.
    #[arg(long, default_value_t = 7)]
    train_days: i64,
    /// Test windows, each starting 7 days before the previous one.
    #[arg(long, default_value_t = 1)]
    folds: usize,
    /// The featurizer's terminal label delay, as in `riskstream features`.
    #[arg(long, default_value_t = 7)]
    label_delay_days: i64,
    /// Also write the numbers as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Load every model under a models root: name, version, task, inputs/outputs, status.
    List {
        #[arg(default_value = "models")]
        dir: PathBuf,
        /// As JSON on stdout (the repository index's fields).
        #[arg(long)]
        json: bool,
    },
    /// Verify every model under DIR (a models root, or one model directory):
    /// sha256, IO against the graph, golden outputs. Exits non-zero naming each problem.
    Verify {
        #[arg(default_value = "models")]
        dir: PathBuf,
    },
    /// Classify card-statement descriptors: label, probability and the most
    /// attended tokens of each.
    Classify {
        /// A descriptor to classify (repeat for several).
        #[arg(long = "text", required = true)]
        texts: Vec<String>,
        /// The text-classification model directory.
        #[arg(long, default_value = "models/merchant-descriptor")]
        model: PathBuf,
        /// How many of the most attended tokens to show.
        #[arg(long, default_value_t = 3)]
        top: usize,
    },
    /// Decode a written cheque amount into digits with the encoder-decoder
    /// pair; shows which words each digit attended to.
    Translate {
        /// The amount in words, e.g. "two hundred forty-five and 10/100".
        text: String,
        /// Beam search of this width (default: greedy).
        #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        beam: Option<usize>,
        #[arg(long, default_value = "models/cheque-words-encoder")]
        encoder: PathBuf,
        #[arg(long, default_value = "models/cheque-words-decoder")]
        decoder: PathBuf,
    },
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("riskstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("RISKSTREAM_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run => riskstream::cli::run(&Config::load(&cli.config)?).await,
        Command::CheckConfig => riskstream::cli::check_config(&cli.config),
        Command::Migrate => riskstream::cli::migrate(&Config::load(&cli.config)?).await,
        Command::Simulate(a) => {
            let kafka = match &a.out {
                Some(_) => None,
                None => Some(
                    Config::load(&cli.config)
                        .context("simulating to Kafka needs the config")?
                        .kafka,
                ),
            };
            let world = match a.cards {
                Some(cards) => SimConfig::for_cards(a.transactions, cards, a.seed),
                None => SimConfig::for_transactions(a.transactions, a.seed),
            };
            riskstream::cli::simulate(world, a.out.as_deref(), kafka.as_ref(), a.rate).await
        }
        Command::Features {
            input,
            out,
            label_delay_days,
            history_len,
            strict,
            max_future_secs,
        } => {
            let report = offline::featurize_file(
                &input,
                &out,
                label_delay_days,
                history_len,
                2000,
                offline::FutureBound::from_now(max_future_secs),
                strict,
            )?;
            eprint!("{report}");
            if report.featurized == 0 && report.rejected > 0 {
                eprintln!("riskstream: every row of {} was rejected", input.display());
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "featurized {} transactions into {}",
                report.featurized,
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Evaluate(a) => {
            let opts = riskstream::evaluate::Options {
                model: a.model,
                data: a.data,
                test_start: a.test_start,
                protocol: riskstream::evaluate::Protocol {
                    test_days: a.test_days,
                    delay_days: a.delay_days,
                    train_days: a.train_days,
                },
                folds: a.folds,
                label_delay_days: a.label_delay_days,
            };
            riskstream::cli::evaluate(opts, a.json.as_deref()).await
        }
        Command::Serve(opts) => riskstream::cli::serve_models(opts).await,
        Command::Models {
            command: ModelsCommand::List { dir, json },
        } => riskstream::cli::list_models(&dir, json).await,
        Command::Models {
            command: ModelsCommand::Verify { dir },
        } => riskstream::cli::verify_models(&dir).await,
        Command::Models {
            command: ModelsCommand::Classify { texts, model, top },
        } => riskstream::cli::classify_text(&model, &texts, top).await,
        Command::Models {
            command:
                ModelsCommand::Translate {
                    text,
                    beam,
                    encoder,
                    decoder,
                },
        } => riskstream::cli::translate(&encoder, &decoder, &text, beam).await,
        Command::Report { json } => {
            riskstream::cli::report(&Config::load(&cli.config)?, json).await
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "riskstream",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Backtest(args) => {
            riskstream::cli::backtest(&Config::load(&cli.config)?, &args).await
        }
        Command::Summarise { recheck_days } => {
            riskstream::cli::summarise(&Config::load(&cli.config)?, recheck_days).await
        }
        Command::Partitions => riskstream::cli::partitions(&Config::load(&cli.config)?).await,
        Command::Console {
            hash_password: true,
        } => riskstream::cli::hash_password(),
        Command::Console {
            hash_password: false,
        } => riskstream::cli::console(Config::load(&cli.config)?).await,
    }
}
