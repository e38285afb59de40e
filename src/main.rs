//! The `riskstream` command line: parses arguments and calls the library.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use riskstream::config::Config;
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
    Features {
        #[arg(long = "in")]
        input: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 7)]
        label_delay_days: i64,
    },
    /// Model directories: verify checksums and IO contracts.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Summarize what landed in Postgres: decisions by outcome and a few explained declines.
    Report,
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
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Verify a model directory (default: the configured model).
    Verify { dir: Option<PathBuf> },
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
            riskstream::cli::simulate(
                a.transactions,
                a.seed,
                a.out.as_deref(),
                kafka.as_ref(),
                a.rate,
            )
            .await
        }
        Command::Features {
            input,
            out,
            label_delay_days,
        } => {
            let n = riskstream::features::offline::featurize_file(
                &input,
                &out,
                label_delay_days,
                2000,
            )?;
            println!("featurized {n} transactions into {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Models {
            command: ModelsCommand::Verify { dir },
        } => {
            let dir = match dir {
                Some(d) => d,
                None => Config::load(&cli.config)?.model.dir,
            };
            riskstream::cli::verify_model(&dir)
        }
        Command::Report => riskstream::cli::report(&Config::load(&cli.config)?).await,
    }
}
