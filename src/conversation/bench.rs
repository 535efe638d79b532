//! `wealthdesk bench turns`: drives concurrent conversations through the whole bot turn
//! pipeline — the client's message committed, then the worker's path for it (lease,
//! cursor, engine state, suitability-filtered retrieval, the offline composer or the
//! LLM, the turn record, the replies committed) — on a fresh embedded database over the
//! demo knowledge base, and prints turns per second and turn latency.
//!
//! Each conversation greets, asks an FAQ question, takes the whole risk questionnaire
//! and then alternates questions from the retrieval eval set with requests for
//! products. With `--llm fake` the bot writes through a local OpenAI-compatible server
//! that streams at a fixed rate, so the same pipeline is measured with an LLM in it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::{Desk, worker};
use crate::config::{BotRetrieval, Config};
use crate::im::model::Sender;
use crate::im::store::{self, NewMessage};
use crate::im::{Im, Language};
use crate::knowledge::eval::percentile;
use crate::llm::fake::{Behaviour, FakeLlm};

#[derive(Debug, Clone, clap::Args)]
pub struct TurnBenchArgs {
    /// Conversations driven at once.
    #[arg(long, default_value_t = 6)]
    pub conversations: usize,
    /// Advisory turns per conversation after the questionnaire.
    #[arg(long, default_value_t = 150)]
    pub advisory_turns: usize,
    /// `offline` (no LLM) or `fake` (a local OpenAI-compatible server streaming at a
    /// fixed rate).
    #[arg(long, default_value = "offline")]
    pub llm: String,
    /// With `--llm fake`: milliseconds before the first token…
    #[arg(long, default_value_t = 100)]
    pub fake_first_token_ms: u64,
    /// …tokens per reply…
    #[arg(long, default_value_t = 40)]
    pub fake_tokens: usize,
    /// …and milliseconds between tokens.
    #[arg(long, default_value_t = 5)]
    pub fake_token_ms: u64,
    /// Retrieval of the bot's turns: `bm25` or `hybrid` (default: `bot.retrieval`).
    #[arg(long)]
    pub retrieval: Option<String>,
    /// The question set (the retrieval eval set).
    #[arg(long, default_value = "knowledge/eval/retrieval.jsonl")]
    pub questions: PathBuf,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct TurnBenchReport {
    pub writer: String,
    pub retrieval: String,
    pub conversations: usize,
    pub turns: usize,
    pub wall_s: f64,
    pub turns_per_sec: f64,
    pub latency_ms: Latency,
    /// With the fake LLM: the LLM-written turns' latency less the LLM's own time.
    pub llm_turns_excluding_llm_ms: Option<Latency>,
    /// Latency of the turns by kind (questionnaire, answer, recommendation, greeting).
    pub by_kind: Vec<(String, Latency)>,
    /// With the fake LLM: what it spends per reply by construction.
    pub fake_llm_ms_per_reply: Option<u64>,
    pub setup_s: f64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    Latency {
        count: v.len(),
        p50: percentile(&v, 0.5),
        p90: percentile(&v, 0.9),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or_default(),
    }
}

/// A throwaway deployment for measuring: an embedded database in a temp dir, the IM
/// backbone, the demo knowledge base and the bot's desk.
pub struct Scratch {
    pub desk: Desk,
    pub im: Arc<Im>,
    pub retrieval: BotRetrieval,
    /// The local fake LLM, when one was asked for.
    pub fake: Option<FakeLlm>,
    _dir: tempfile::TempDir,
}

/// The LLM a scratch deployment writes with.
pub enum ScratchLlm {
    Offline,
    /// A local fake streaming `tokens` tokens, `token_ms` apart, after `first_token_ms`.
    Fake {
        first_token_ms: u64,
        tokens: usize,
        token_ms: u64,
    },
}

pub async fn scratch(
    config: &Config,
    retrieval: Option<&str>,
    llm: ScratchLlm,
) -> anyhow::Result<Scratch> {
    let dir = tempfile::tempdir()?;
    let mut config = config.clone();
    config.data_dir = dir.path().to_path_buf();
    config.database_url = None;
    config.nats_url = None;
    config.qdrant_url = None;
    if let Some(r) = retrieval {
        config.bot.retrieval = match r {
            "bm25" => BotRetrieval::Bm25,
            "hybrid" => BotRetrieval::Hybrid,
            other => anyhow::bail!("--retrieval {other:?} is not bm25 or hybrid"),
        };
    }
    if config.bot.retrieval == BotRetrieval::Bm25 {
        // Nothing embeds: skip the model (and its minute of first-ingest embedding).
        config.knowledge.dense_languages.clear();
    } else if config.knowledge.embedding_model_dir.is_none() {
        let model = crate::knowledge::index::default_model_dir(&Config::default());
        anyhow::ensure!(
            model.exists(),
            "--retrieval hybrid needs the embedding model (scripts/fetch-embedding-model)"
        );
        config.knowledge.embedding_model_dir = Some(std::fs::canonicalize(model)?);
    }
    let fake = match llm {
        ScratchLlm::Offline => None,
        ScratchLlm::Fake {
            first_token_ms,
            tokens,
            token_ms,
        } => {
            let fake = FakeLlm::start().await;
            fake.set_default(Behaviour::Reply {
                chunks: (0..tokens)
                    .map(|i| if i % 9 == 8 { "[1] " } else { "word " }.to_string())
                    .collect(),
                first_delay: Duration::from_millis(first_token_ms),
                per_chunk: Duration::from_millis(token_ms),
                prompt_tokens: 500,
            });
            config.llm.base_url = Some(fake.base_url());
            config.llm.api_key = Some(crate::config::Secret::new("bench"));
            Some(fake)
        }
    };
    let db = crate::db::Db::connect(&config).await?;
    db.migrate().await?;
    let im = Im::start(db.clone(), &config).await?;
    let knowledge = crate::app::open_knowledge(&config, &db).await?;
    let metrics = crate::http::metrics::Metrics::new();
    let desk = crate::app::assemble_desk(&config, &db, &im, knowledge, metrics.handoff.clone())?;
    Ok(Scratch {
        desk,
        im,
        retrieval: config.bot.retrieval,
        fake,
        _dir: dir,
    })
}

pub async fn run(config: &Config, args: &TurnBenchArgs) -> anyhow::Result<()> {
    let setup = Instant::now();
    let llm = match args.llm.as_str() {
        "offline" => ScratchLlm::Offline,
        "fake" => ScratchLlm::Fake {
            first_token_ms: args.fake_first_token_ms,
            tokens: args.fake_tokens,
            token_ms: args.fake_token_ms,
        },
        other => anyhow::bail!("--llm {other:?} is not offline or fake"),
    };
    let questions = load_questions(&args.questions)?;
    anyhow::ensure!(
        !questions.is_empty(),
        "no questions in {}",
        args.questions.display()
    );
    let deployment = scratch(config, args.retrieval.as_deref(), llm).await?;
    let (desk, im, retrieval) = (
        deployment.desk.clone(),
        deployment.im.clone(),
        deployment.retrieval,
    );
    let fake = deployment.fake.as_ref();
    let db = desk.db.clone();
    // Questions the input rails refuse or hand to a person would end a conversation's
    // advisory turns early: the bench measures the advisory path, so they are left out.
    let questions: Vec<Question> = questions
        .into_iter()
        .filter(|q| {
            let verdict = desk.guard.input(&q.text, q.language);
            verdict.blocked.is_none() && verdict.escalated.is_none()
        })
        .collect();
    // The bench runs the worker's path itself: take the work items off the bus.
    let mut work = im
        .bus
        .work(worker::BOT_TURN)
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::spawn(async move { while work.recv().await.is_some() {} });
    let setup_s = setup.elapsed().as_secs_f64();

    let mut tasks = Vec::new();
    // Conversations are opened before the clock starts.
    let mut opened = Vec::new();
    for c in 0..args.conversations {
        opened.push(open(&desk, c).await?);
    }
    let started = Instant::now();
    for (c, (id, language)) in opened.into_iter().enumerate() {
        let (im, desk, questions) = (im.clone(), desk.clone(), questions.clone());
        let advisory = args.advisory_turns;
        tasks.push(tokio::spawn(async move {
            drive(&im, &desk, c, id, language, &questions, advisory).await
        }));
    }
    let mut samples: Vec<Sample> = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let excluding = match fake {
        Some(_) => Some(latency(excluding_llm(&desk, &samples).await?)),
        None => None,
    };
    let mut kinds: Vec<String> = samples.iter().map(|s| s.kind.clone()).collect();
    kinds.sort();
    kinds.dedup();
    let report = TurnBenchReport {
        writer: desk.writer.mode().into(),
        retrieval: format!("{retrieval:?}").to_lowercase(),
        conversations: args.conversations,
        turns: samples.len(),
        wall_s,
        turns_per_sec: samples.len() as f64 / wall_s,
        latency_ms: latency(samples.iter().map(|s| s.ms).collect()),
        llm_turns_excluding_llm_ms: excluding,
        by_kind: kinds
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    latency(
                        samples
                            .iter()
                            .filter(|s| &s.kind == k)
                            .map(|s| s.ms)
                            .collect(),
                    ),
                )
            })
            .collect(),
        fake_llm_ms_per_reply: fake
            .as_ref()
            .map(|_| args.fake_first_token_ms + args.fake_token_ms * args.fake_tokens as u64),
        setup_s,
    };
    db.close().await;
    drop(deployment);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &TurnBenchReport) {
    println!(
        "bot turns: {} conversations, {} turns, writer {}, retrieval {} (setup {:.1} s)",
        r.conversations, r.turns, r.writer, r.retrieval, r.setup_s
    );
    if let Some(ms) = r.fake_llm_ms_per_reply {
        println!("fake LLM: {ms} ms per reply by construction (first token + streamed tokens)");
    }
    println!(
        "throughput: {:.0} turns/s over {:.2} s",
        r.turns_per_sec, r.wall_s
    );
    let line = |name: &str, l: &Latency| {
        println!(
            "{name:<16} n={:<6} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            l.count, l.p50, l.p90, l.p99, l.max
        )
    };
    line("all turns", &r.latency_ms);
    if let Some(l) = &r.llm_turns_excluding_llm_ms {
        line("LLM turns − LLM", l);
    }
    for (kind, l) in &r.by_kind {
        line(kind, l);
    }
}

#[derive(Clone)]
struct Question {
    text: String,
    language: Language,
}

fn load_questions(path: &std::path::Path) -> anyhow::Result<Vec<Question>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let q: crate::knowledge::eval::EvalQuery = serde_json::from_str(l)?;
            Ok(Question {
                language: q.lang.parse().map_err(anyhow::Error::msg)?,
                text: q.query,
            })
        })
        .collect()
}

/// Opens the `n`th conversation: zh-CN and English alternate.
async fn open(desk: &Desk, n: usize) -> anyhow::Result<(crate::im::ConversationId, Language)> {
    let language = if n.is_multiple_of(2) {
        Language::ZhCn
    } else {
        Language::En
    };
    let client = format!("bench-client-{n}");
    let user = crate::auth::AuthUser {
        id: client.clone(),
        role: crate::auth::Role::Client,
        display_name: client,
        language: Some(language.as_str().into()),
        expires_at: u64::MAX,
    };
    let conversation = store::create_conversation(&desk.db, &user, language).await?;
    Ok((conversation.id, language))
}

/// One conversation's script; returns (turn kind, latency ms) per turn.
async fn drive(
    im: &Im,
    desk: &Desk,
    n: usize,
    id: crate::im::ConversationId,
    language: Language,
    questions: &[Question],
    advisory: usize,
) -> anyhow::Result<Vec<Sample>> {
    let client = format!("bench-client-{n}");
    let asked: Vec<&Question> = questions
        .iter()
        .filter(|q| q.language == language)
        .collect();
    let mut script: Vec<(&str, String)> = vec![
        (
            "greeting",
            if language == Language::ZhCn {
                "你好"
            } else {
                "hello"
            }
            .into(),
        ),
        ("answer", asked[n % asked.len()].text.clone()),
        (
            "questionnaire",
            if language == Language::ZhCn {
                "我想做风险测评"
            } else {
                "I want to take the risk assessment"
            }
            .into(),
        ),
    ];
    for _ in 0..desk.pack.questions.len() {
        script.push(("questionnaire", "B".into()));
    }
    for i in 0..advisory {
        if i % 3 == 2 {
            let ask = if language == Language::ZhCn {
                "请给我推荐几只适合我的基金"
            } else {
                "Can you recommend some funds for me?"
            };
            script.push(("recommendation", ask.into()));
        } else {
            script.push(("answer", asked[(n * 7 + i) % asked.len()].text.clone()));
        }
    }
    let mut samples = Vec::with_capacity(script.len());
    for (i, (kind, text)) in script.into_iter().enumerate() {
        let sent = im
            .committer
            .commit(NewMessage {
                conversation_id: id,
                sender: Sender {
                    id: client.clone(),
                    role: "client".into(),
                },
                kind: "text".into(),
                body: json!({ "text": text }),
                client_msg_id: Some(format!("bench-{i}")),
            })
            .await?;
        let seq = sent.message().map_or(0, |m| m.seq);
        let t = Instant::now();
        worker::run_turns(im, desk, id).await?;
        samples.push(Sample {
            kind: kind.to_string(),
            ms: t.elapsed().as_secs_f64() * 1e3,
            conversation: id,
            seq,
        });
    }
    Ok(samples)
}

/// One timed turn.
struct Sample {
    kind: String,
    ms: f64,
    conversation: crate::im::ConversationId,
    seq: i64,
}

/// Each LLM-written turn's latency less the time the LLM took (from its turn record).
async fn excluding_llm(desk: &Desk, samples: &[Sample]) -> anyhow::Result<Vec<f64>> {
    let mut llm_ms = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for s in samples {
        if seen.insert(s.conversation) {
            for turn in super::session::records(&desk.db, s.conversation).await? {
                if let Some(ms) = turn
                    .detail
                    .pointer("/llm/total_ms")
                    .and_then(|v| v.as_f64())
                {
                    *llm_ms
                        .entry((s.conversation, turn.trigger_seq))
                        .or_insert(0.0) += ms;
                }
            }
        }
    }
    Ok(samples
        .iter()
        .filter_map(|s| llm_ms.get(&(s.conversation, s.seq)).map(|llm| s.ms - llm))
        .collect())
}
