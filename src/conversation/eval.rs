//! `wealthdesk eval answers`: how useful the offline composer is on the demo knowledge
//! base. Every question of the retrieval eval set is put to the bot as a client whose
//! profile allows every product (so nothing relevant is filtered away); an answer counts
//! as grounded when it cites at least one of the question's relevant documents.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::answer::{self, Ask};
use super::bench::{Scratch, ScratchLlm, scratch};
use crate::config::Config;
use crate::im::model::{Message, Sender};
use crate::im::{ConversationId, Language};
use crate::knowledge::eval::{EvalQuery, percentile};
use crate::questionnaire::profile;
use crate::questionnaire::scoring::{assess, boldest_answers};

#[derive(Debug, Clone, clap::Args)]
pub struct AnswerEvalArgs {
    /// The eval set (JSON lines, as for `eval retrieval`).
    #[arg(long, default_value = "knowledge/eval/retrieval.jsonl")]
    pub set: PathBuf,
    /// `bm25` or `hybrid` (default: `bot.retrieval`).
    #[arg(long)]
    pub retrieval: Option<String>,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also list every question the bot could not answer or answered from other sources.
    #[arg(long)]
    pub misses: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Figures {
    pub questions: usize,
    /// Share of questions the bot answered (quoted something) rather than declined.
    pub answered: f64,
    /// Share of questions whose answer cites a relevant document.
    pub grounded: f64,
    /// Share of cited sources that are relevant documents.
    pub citation_precision: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct AnswerEvalReport {
    pub retrieval: String,
    pub client_level: String,
    pub all: Figures,
    pub zh_cn: Figures,
    pub en: Figures,
    pub misses: Vec<serde_json::Value>,
}

struct Outcome {
    language: Language,
    answered: bool,
    relevant_cited: usize,
    cited: usize,
    ms: f64,
}

fn figures(outcomes: &[&Outcome]) -> Figures {
    let n = outcomes.len().max(1) as f64;
    let mut ms: Vec<f64> = outcomes.iter().map(|o| o.ms).collect();
    ms.sort_by(f64::total_cmp);
    let cited: usize = outcomes.iter().map(|o| o.cited).sum();
    Figures {
        questions: outcomes.len(),
        answered: outcomes.iter().filter(|o| o.answered).count() as f64 / n,
        grounded: outcomes.iter().filter(|o| o.relevant_cited > 0).count() as f64 / n,
        citation_precision: outcomes.iter().map(|o| o.relevant_cited).sum::<usize>() as f64
            / cited.max(1) as f64,
        latency_p50_ms: percentile(&ms, 0.5),
        latency_p99_ms: percentile(&ms, 0.99),
    }
}

pub async fn run(config: &Config, args: &AnswerEvalArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.set)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.set.display()))?;
    let queries: Vec<EvalQuery> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: {e}", args.set.display(), i + 1))
        })
        .collect::<anyhow::Result<_>>()?;
    let deployment: Scratch =
        scratch(config, args.retrieval.as_deref(), ScratchLlm::Offline).await?;
    let desk = &deployment.desk;
    let retrieval = deployment.retrieval;
    // The boldest answers throughout: a client allowed every product.
    let pack = &desk.pack;
    let answers = boldest_answers(pack);
    let assessment = assess(pack, &answers)?;
    let client = "eval-client";
    let user = crate::auth::AuthUser {
        id: client.into(),
        role: crate::auth::Role::Client,
        display_name: client.into(),
        language: None,
        expires_at: u64::MAX,
    };
    crate::im::store::upsert_participant(&desk.db, &user, Language::En).await?;
    let stored = profile::save(&desk.db, client, None, &answers, &assessment, 12).await?;
    let mut outcomes = Vec::new();
    let mut misses = Vec::new();
    for q in &queries {
        let language: Language = q.lang.parse().map_err(anyhow::Error::msg)?;
        let conversation = crate::im::store::create_conversation(&desk.db, &user, language).await?;
        let message = Message {
            conversation_id: conversation.id,
            seq: 1,
            sender: Sender {
                id: client.into(),
                role: "client".into(),
            },
            kind: "text".into(),
            body: json!({ "text": q.query }),
            client_msg_id: None,
            created_at: String::new(),
        };
        let started = Instant::now();
        let written = answer::answer(
            desk,
            &conversation,
            &message,
            &q.query,
            Some(&stored),
            Ask::Question,
            &mut |_| {},
        )
        .await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let cited: Vec<String> = written.reply.body["citations"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["doc_id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let relevant_cited = cited.iter().filter(|d| q.relevant.contains(d)).count();
        if relevant_cited == 0 {
            misses.push(json!({
                "id": q.id,
                "query": q.query,
                "relevant": q.relevant,
                "cited": cited,
                "answer": written.reply.body["text"],
            }));
        }
        outcomes.push(Outcome {
            language,
            answered: written.answered,
            relevant_cited,
            cited: cited.len(),
            ms,
        });
        let _: ConversationId = conversation.id;
    }
    let all: Vec<&Outcome> = outcomes.iter().collect();
    let zh: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.language == Language::ZhCn)
        .collect();
    let en: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.language == Language::En)
        .collect();
    let report = AnswerEvalReport {
        retrieval: format!("{retrieval:?}").to_lowercase(),
        client_level: format!("{} (up to {})", stored.level, stored.max_product),
        all: figures(&all),
        zh_cn: figures(&zh),
        en: figures(&en),
        misses: if args.misses { misses } else { Vec::new() },
    };
    desk.db.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "offline answers: {} questions, retrieval {}, client {}",
        report.all.questions, report.retrieval, report.client_level
    );
    println!(
        "{:<8} {:>9} {:>9} {:>10} {:>9} {:>9}",
        "", "answered", "grounded", "precision", "p50 ms", "p99 ms"
    );
    for (name, f) in [
        ("all", &report.all),
        ("zh-CN", &report.zh_cn),
        ("en", &report.en),
    ] {
        println!(
            "{name:<8} {:>9.3} {:>9.3} {:>10.3} {:>9.2} {:>9.2}",
            f.answered, f.grounded, f.citation_precision, f.latency_p50_ms, f.latency_p99_ms
        );
    }
    for miss in &report.misses {
        println!(
            "miss {}: {} → cited {}",
            miss["id"], miss["query"], miss["cited"]
        );
    }
    Ok(())
}
