//! `wealthdesk archive …` and `wealthdesk bench archive`.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, Subcommand};

use super::checkpoint::{self, Signer};
use super::{conversation_chain, export, verify};
use crate::config::Config;
use crate::db::Db;

#[derive(Subcommand)]
pub enum ArchiveCommand {
    /// Recompute every chain, check the newest checkpoint and compare the archive with
    /// the live tables (or check an export file offline); names each altered record and
    /// fails when there is one.
    Verify {
        /// Only this conversation's chain.
        #[arg(long, value_name = "ID")]
        conversation: Option<String>,
        /// Check this export file on its own instead of the database.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        /// The key checkpoints must be signed with (hex), e.g. as lodged outside.
        #[arg(long, value_name = "HEX")]
        public_key: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Sign a checkpoint over every chain head now.
    Checkpoint {
        #[arg(long)]
        json: bool,
    },
    /// Export conversations' chains as JSONL with a fresh signed checkpoint.
    Export {
        /// A conversation to export (repeat for several).
        #[arg(long = "conversation", value_name = "ID", required = true)]
        conversations: Vec<String>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key checkpoints are signed with (to lodge outside the system).
    PublicKey,
    /// Remove what is past its retention and not under a legal hold (each removal is
    /// recorded in the archive's purges chain).
    Purge {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Conversations to fill.
    #[arg(long, default_value_t = 1000)]
    pub conversations: usize,
    /// Messages in each.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Verification runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long)]
    pub json: bool,
}

fn signer(config: &Config) -> anyhow::Result<Signer> {
    Signer::load_or_create(&config.archive.key_path(&config.data_dir))
}

pub async fn run(config: &Config, command: ArchiveCommand) -> anyhow::Result<()> {
    if let ArchiveCommand::Verify {
        export: Some(file),
        public_key,
        json,
        ..
    } = &command
    {
        let report = export::verify_file(file, public_key.as_deref())?;
        return finish(&report, *json);
    }
    let db = Db::connect(config).await?;
    db.migrate().await?;
    let outcome = match command {
        ArchiveCommand::Verify {
            conversation,
            public_key,
            json,
            ..
        } => {
            let report = verify::run(&db, conversation.as_deref(), public_key.as_deref()).await?;
            finish(&report, json)
        }
        ArchiveCommand::Checkpoint { json } => {
            let cp = checkpoint::create(&db, &signer(config)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cp)?);
            } else {
                println!(
                    "checkpoint {}: {} records in {} chains, root {}, signed by {}",
                    cp.id, cp.records, cp.chains, cp.root, cp.public_key
                );
            }
            Ok(())
        }
        ArchiveCommand::Export { conversations, out } => {
            let chains: Vec<String> = conversations
                .iter()
                .map(|c| conversation_chain(c))
                .collect();
            let entries = export::write(&db, &signer(config)?, &chains, &out).await?;
            println!(
                "exported {entries} entries of {} conversations to {}",
                chains.len(),
                out.display()
            );
            Ok(())
        }
        ArchiveCommand::Purge { dry_run, json } => {
            let report =
                super::retention::purge(&db, &config.archive, crate::time_fmt::now_ms(), dry_run)
                    .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{} {} conversations and the profiles of {} clients; {} kept under a legal hold",
                    if dry_run { "would purge" } else { "purged" },
                    report.conversations.len(),
                    report.clients.len(),
                    report.held.len()
                );
            }
            Ok(())
        }
        ArchiveCommand::PublicKey => {
            println!("{}", signer(config)?.public_key());
            Ok(())
        }
    };
    db.close().await;
    outcome
}

fn finish(report: &verify::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        report.print();
    }
    if report.ok() {
        Ok(())
    } else {
        anyhow::bail!("{} altered record(s) found", report.problems.len())
    }
}

/// Fills a fresh SQLite archive through the real write path, then times verification.
pub async fn bench(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = config.clone();
    config.data_dir = dir.path().to_path_buf();
    config.database_url = None;
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    let filled = Instant::now();
    crate::im::store::fill_for_bench(&db, args.conversations, args.messages).await?;
    let fill_secs = filled.elapsed().as_secs_f64();
    checkpoint::create(&db, &signer(&config)?).await?;
    let mut runs = Vec::new();
    let mut records = 0;
    for _ in 0..args.repeat.max(1) {
        let report = verify::run(&db, None, None).await?;
        anyhow::ensure!(report.ok(), "the benchmark's own archive failed to verify");
        records = report.records;
        runs.push(report.records_per_sec);
    }
    runs.sort_by(f64::total_cmp);
    let median = runs[runs.len() / 2];
    db.close().await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "records": records,
                "conversations": args.conversations,
                "fill_secs": fill_secs,
                "verify_records_per_sec": runs,
                "median_records_per_sec": median,
            }))?
        );
    } else {
        println!(
            "archive verify: {records} records ({} conversations × {} messages, filled in {fill_secs:.1} s); \
             records/s per run {:?}; median {median:.0} records/s",
            args.conversations,
            args.messages,
            runs.iter().map(|r| r.round() as u64).collect::<Vec<_>>()
        );
    }
    Ok(())
}
