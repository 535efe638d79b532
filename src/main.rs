//! The wealthdesk command line: a thin layer over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wealthdesk::auth::{Role, TokenService, parse_ttl};
use wealthdesk::config::{CliOverrides, Config};
use wealthdesk::db::Db;
use wealthdesk::{Application, app, telemetry};

#[derive(Parser)]
#[command(
    name = "wealthdesk",
    version,
    about = "AI advisory desk for retail finance apps"
)]
struct Cli {
    /// Configuration file (default: ./wealthdesk.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory for the embedded database and keys (default ./data; also WEALTHDESK_DATA_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (migrates the database first).
    Serve {
        /// Address to listen on (default 127.0.0.1:8080; also WEALTHDESK_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Ingest the knowledge base (product sheets and FAQs) into the database and the
    /// vector store. Unchanged files are skipped, changed ones replaced, deleted ones removed.
    Ingest {
        /// Root of the knowledge base (default: knowledge.dir, ./knowledge).
        path: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure quality and speed.
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Measure throughput and latency.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// The tamper-evident archive: verify, checkpoint, export.
    Archive {
        #[command(subcommand)]
        command: wealthdesk::archive::cli::ArchiveCommand,
    },
    /// Development tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed token (HS256 with the configured or development secret).
    Issue {
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The subject: the user's id in your identity system.
        #[arg(long)]
        sub: String,
        /// Lifetime such as 30m, 8h, 7d.
        #[arg(long, default_value = "8h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
        /// Display name shown to other participants.
        #[arg(long)]
        name: Option<String>,
        /// Preferred language (zh-CN or en).
        #[arg(long)]
        lang: Option<String>,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Retrieval quality (recall@5, nDCG@5, MRR for BM25, dense and hybrid) on the eval
    /// set, and query latency on a synthetic corpus.
    Retrieval(wealthdesk::knowledge::eval::RetrievalArgs),
    /// How often offline answers cite a relevant document (the retrieval eval set put to
    /// the bot), and how fast they are written.
    Answers(wealthdesk::conversation::eval::AnswerEvalArgs),
    /// Guardrail precision and recall per rule on the labelled set, false positives on
    /// benign traffic, and the rails' latency per message.
    Guardrails(wealthdesk::guardrails::eval::GuardrailEvalArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Bot turns per second and turn latency through the whole turn pipeline (offline,
    /// or with a local fake LLM streaming at a fixed rate).
    Turns(wealthdesk::conversation::bench::TurnBenchArgs),
    /// Archive verification throughput (records per second) on a filled SQLite archive.
    Archive(wealthdesk::archive::cli::BenchArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it with secrets redacted.
    Check,
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    wealthdesk::install_crypto_provider();
    let overrides = CliOverrides {
        config_file: cli.config.clone(),
        listen: match &cli.command {
            Command::Serve { listen } => *listen,
            _ => None,
        },
        data_dir: cli.data_dir.clone(),
    };
    let config = match Config::load(&overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve { .. } => {
            let application = Application::build(config).await?;
            tracing::info!(address = %application.local_addr(), "wealthdesk is listening");
            println!(
                "wealthdesk listening on http://{}",
                application.local_addr()
            );
            application.run_until(app::shutdown_signal()).await
        }
        Command::Migrate => {
            let db = Db::connect(&config).await?;
            db.migrate().await?;
            db.close().await;
            println!("migrations applied");
            Ok(())
        }
        Command::Ingest { path, json } => {
            let db = Db::connect(&config).await?;
            db.migrate().await?;
            let kb = wealthdesk::knowledge::KnowledgeBase::open(&config, db.clone()).await?;
            let root = path.unwrap_or_else(|| config.knowledge.dir.clone());
            let report = kb.ingest(&root).await?;
            db.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "ingested {} documents ({} chunks) from {} in {:.0} ms: {} added, {} updated, {} removed, {} unchanged; vector store: {} points written, {} deleted",
                    report.documents,
                    report.chunks,
                    root.display(),
                    report.elapsed_ms,
                    report.added.len(),
                    report.updated.len(),
                    report.removed.len(),
                    report.unchanged,
                    report.points_upserted,
                    report.points_deleted
                );
            }
            Ok(())
        }
        Command::Eval {
            command: EvalCommand::Retrieval(args),
        } => wealthdesk::knowledge::eval::run_retrieval(&config, &args).await,
        Command::Eval {
            command: EvalCommand::Answers(args),
        } => wealthdesk::conversation::eval::run(&config, &args).await,
        Command::Eval {
            command: EvalCommand::Guardrails(args),
        } => wealthdesk::guardrails::eval::run(&config, &args).await,
        Command::Bench {
            command: BenchCommand::Turns(args),
        } => wealthdesk::conversation::bench::run(&config, &args).await,
        Command::Bench {
            command: BenchCommand::Archive(args),
        } => wealthdesk::archive::cli::bench(&config, &args).await,
        Command::Archive { command } => wealthdesk::archive::cli::run(&config, command).await,
        Command::Token {
            command:
                TokenCommand::Issue {
                    role,
                    sub,
                    ttl,
                    name,
                    lang,
                },
        } => {
            let tokens = TokenService::from_config(&config)?;
            println!("{}", tokens.issue(&sub, role, ttl, name, lang)?);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            print!("{}", config.to_redacted_toml());
            Ok(())
        }
    }
}
