//! Advisory turns: a question answered, or suitable products presented, from the
//! knowledge base — by the LLM when one is configured (streamed), else by the offline
//! composer. Retrieval is always filtered by the client's suitability first: without a
//! valid profile only the FAQs are searched; with one, no product chunk above their
//! level. Each turn leaves a full record: input, retrieval (chunk ids, scores, document
//! versions), prompt ids and hashes, model and parameters, the token budget, latencies
//! and the output.

use std::time::Instant;

use serde_json::{Value, json};

use super::engine::{Desk, Reply, pick};
use super::session::{BotState, TurnRecord};
use crate::config::BotRetrieval;
use crate::guardrails::{Action, Direction, OutputContext};
use crate::im::{Conversation, Language, Message};
use crate::knowledge::api::Cap;
use crate::knowledge::store::PayloadFilter;
use crate::knowledge::{Citation, Product, SearchMode, SearchRequest};
use crate::llm::{ChatMessage, ChatRole, PromptKind, StreamEvent, offline};
use crate::questionnaire::profile::RiskProfile;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    Question,
    Recommendation,
}

/// Where a turn's streamed text goes.
pub type Sink<'a> = &'a mut (dyn FnMut(StreamEvent) + Send);

/// A written advisory reply and the record of how it was written.
pub struct Answered {
    pub reply: Reply,
    pub record: TurnRecord,
    /// False when the bot could not answer (nothing grounded, the LLM failed, blocked).
    pub answered: bool,
    /// A blocked reply whose rule asks for a person.
    pub handoff: Option<String>,
}

/// One source as the reply cites it (`[n]` in the text).
fn cite(n: usize, c: &Citation) -> Value {
    json!({
        "n": n,
        "doc_id": c.doc_id,
        "kind": c.kind,
        "title": c.title,
        "section": c.section,
        "product_id": c.product_id,
        "chunk_id": c.chunk_id,
        "version_hash": c.version_hash,
    })
}

fn hit_record(c: &Citation) -> Value {
    json!({
        "chunk_id": c.chunk_id,
        "doc_id": c.doc_id,
        "section": c.section,
        "version_hash": c.version_hash,
        "score": c.score,
        "text": c.text,
    })
}

/// The client's level and allowed products as prompts and texts state them.
fn levels(desk: &Desk, profile: Option<&RiskProfile>, language: Language) -> (String, String) {
    match profile {
        Some(p) => {
            let name = desk
                .pack
                .level(&p.level)
                .map(|l| l.name.get(language).to_string())
                .unwrap_or_default();
            let allowed = super::engine::allowed_products(&desk.pack, &p.max_product);
            let span = match (allowed.first(), allowed.last()) {
                (Some(a), Some(b)) if a != b => format!("{a}–{b}"),
                (Some(a), _) => a.clone(),
                _ => String::new(),
            };
            (format!("{} ({name})", p.level), span)
        }
        None => (
            pick(language, "未评估", "not assessed"),
            pick(
                language,
                "无（尚未完成有效的风险评估，不得推荐任何产品）",
                "none (no valid risk assessment: no product may be recommended)",
            ),
        ),
    }
}

/// Searches the knowledge base within the client's suitability.
async fn retrieve(
    desk: &Desk,
    text: &str,
    language: Language,
    profile: Option<&RiskProfile>,
    ask: Ask,
) -> (Vec<Citation>, Value) {
    let mut filter = PayloadFilter::default();
    match profile {
        Some(p) => Cap::parse(&p.max_product).restrict(&mut filter),
        None => filter.kinds = vec!["faq"],
    }
    let limit = match ask {
        Ask::Question => desk.bot.context_chunks,
        Ask::Recommendation => {
            filter.kinds = vec!["product"];
            20
        }
    };
    let request = SearchRequest {
        query: text.to_string(),
        language: Some(language),
        mode: match desk.bot.retrieval {
            BotRetrieval::Bm25 => SearchMode::Bm25,
            BotRetrieval::Hybrid => SearchMode::Hybrid,
        },
        limit,
        filter: filter.clone(),
    };
    let started = Instant::now();
    let (hits, error, mode) = match desk.knowledge.search(&request).await {
        Ok(result) => (result.hits, None, Some(result.mode)),
        Err(e) => {
            tracing::error!(error = %e, "knowledge search failed in a bot turn");
            (Vec::new(), Some(e.to_string()), None)
        }
    };
    let record = json!({
        "query": text,
        "language": language.as_str(),
        "mode": mode,
        "filter": {
            "kinds": filter.kinds,
            "max_risk_rank": filter.max_risk_rank,
            "max_sri": filter.max_sri,
        },
        "hits": hits.iter().map(hit_record).collect::<Vec<_>>(),
        "error": error,
        "ms": started.elapsed().as_secs_f64() * 1e3,
    });
    (hits, record)
}

/// The products a recommendation may present: retrieved product chunks in rank order,
/// one per product, each passing the suitability matcher; when retrieval names too few,
/// the catalogue's suitable products, one per type, riskiest allowed first.
fn candidates<'a>(
    desk: &'a Desk,
    hits: &[Citation],
    profile: &RiskProfile,
) -> Vec<(&'a Product, Option<Citation>)> {
    let facts = profile.facts();
    let suitable =
        |p: &Product| crate::suitability::assess(&desk.pack, &facts, &p.facts(&desk.pack)).eligible;
    let mut out: Vec<(&Product, Option<Citation>)> = Vec::new();
    for hit in hits {
        let Some(product) = hit
            .product_id
            .as_deref()
            .and_then(|id| desk.catalog.get(id))
        else {
            continue;
        };
        if out.iter().any(|(p, _)| p.sheet.id == product.sheet.id) || !suitable(product) {
            continue;
        }
        out.push((product, Some(hit.clone())));
    }
    if out.len() < desk.bot.max_recommendations {
        let mut rest: Vec<&Product> = desk
            .catalog
            .products()
            .iter()
            .filter(|p| suitable(p) && !out.iter().any(|(o, _)| o.sheet.id == p.sheet.id))
            .collect();
        rest.sort_by_key(|p| {
            (
                std::cmp::Reverse(p.sheet.risk_rank()),
                p.sheet.minimum_investment,
            )
        });
        let mut types: Vec<_> = out.iter().map(|(p, _)| p.sheet.kind).collect();
        for p in rest {
            if !types.contains(&p.sheet.kind) {
                types.push(p.sheet.kind);
                out.push((p, None));
            }
        }
    }
    out.truncate(desk.bot.max_recommendations);
    out
}

/// A product's key facts in one line, every figure from its sheet.
pub fn key_facts(desk: &Desk, product: &Product, language: Language) -> String {
    let s = &product.sheet;
    let level = product.facts(&desk.pack).risk_level;
    let lockup = match (s.lockup_months, language) {
        (0, Language::ZhCn) => "无锁定期".to_string(),
        (0, Language::En) => "no lock-up".to_string(),
        (m, Language::ZhCn) => format!("锁定期 {m} 个月"),
        (m, Language::En) => format!("{m}-month lock-up"),
    };
    match language {
        Language::ZhCn => format!(
            "{}（{}）：{}，风险等级 {}，起购 {} {}，{}，赎回约 {} 天到账，管理费 {}%/年，申购费 {}%",
            s.name.zh,
            s.id,
            s.kind.label().zh,
            level,
            s.minimum_investment,
            s.currency,
            lockup,
            s.redemption_days,
            s.fees.management_pct,
            s.fees.subscription_pct
        ),
        Language::En => format!(
            "{} ({}): {}, risk {}, minimum {} {}, {}, redemption paid in about {} days, management fee {}% a year, subscription fee {}%",
            s.name.en,
            s.id,
            s.kind.label().en,
            level,
            s.minimum_investment,
            s.currency,
            lockup,
            s.redemption_days,
            s.fees.management_pct,
            s.fees.subscription_pct
        ),
    }
}

/// The disclosure every recommendation ends with.
pub fn risk_warning(language: Language) -> String {
    pick(
        language,
        "风险提示：市场有风险，投资需谨慎；基金过往业绩不预示其未来表现，投资可能损失本金。以上仅为符合您风险等级的产品介绍，不构成购买建议。",
        "Risk warning: investing involves risk, including the loss of principal; past performance does not predict future returns. These are products within your risk level, not an instruction to buy.",
    )
}

fn cannot_answer(language: Language) -> String {
    pick(
        language,
        "抱歉，我在我们的资料里没有找到这个问题的答案。您可以换个说法，或问我产品、费用、赎回、风险等级等问题；也可以回复“人工”，我为您转接人工顾问。",
        "Sorry, I could not find the answer to that in our materials. You can rephrase it, or ask me about products, fees, redemption or risk levels — or reply \"advisor\" and I will connect you with a human advisor.",
    )
}

fn apology(language: Language) -> String {
    pick(
        language,
        "抱歉，我现在暂时无法回答您的问题。您可以稍后再试，或回复“人工”，我为您转接人工顾问。",
        "Sorry, I can't answer right now. Please try again in a moment, or reply \"advisor\" and I will connect you with a human advisor.",
    )
}

/// Answers `message` (a question or a request for products) for a client with
/// `profile` (`None`: not validly assessed — FAQs only, never products).
pub async fn answer(
    desk: &Desk,
    conversation: &Conversation,
    message: &Message,
    text: &str,
    profile: Option<&RiskProfile>,
    ask: Ask,
    sink: Sink<'_>,
) -> anyhow::Result<Answered> {
    let started = Instant::now();
    let language = conversation.language;
    let (hits, retrieval) = retrieve(desk, text, language, profile, ask).await;
    let retrieval_ms = started.elapsed().as_secs_f64() * 1e3;
    let (client_level, allowed) = levels(desk, profile, language);

    // The sources this reply may use, numbered as the text cites them.
    let mut sources: Vec<String> = Vec::new();
    let mut cited: Vec<Citation> = Vec::new();
    let recommended: Vec<(&Product, Option<Citation>)> = match (ask, profile) {
        (Ask::Recommendation, Some(p)) => candidates(desk, &hits, p),
        _ => Vec::new(),
    };
    match ask {
        Ask::Question => {
            for (i, c) in hits.iter().enumerate() {
                sources.push(format!(
                    "[{}] {} · {}\n{}",
                    i + 1,
                    c.title,
                    c.section,
                    c.text
                ));
                cited.push(c.clone());
            }
        }
        Ask::Recommendation => {
            for (i, (product, hit)) in recommended.iter().enumerate() {
                sources.push(format!(
                    "[{}] {}",
                    i + 1,
                    key_facts(desk, product, language)
                ));
                cited.push(
                    hit.clone()
                        .unwrap_or_else(|| sheet_citation(product, language)),
                );
            }
        }
    }

    let mut detail = json!({
        "ask": match ask { Ask::Question => "question", Ask::Recommendation => "recommendation" },
        "input": message.body.get("text").cloned().unwrap_or(Value::Null),
        "input_redacted": text,
        "client_level": client_level,
        "allowed_products": allowed,
        "profile_id": profile.map(|p| &p.id),
        "retrieval": retrieval,
        "writer": desk.writer.mode(),
    });
    let kind = match ask {
        Ask::Question => "answer",
        Ask::Recommendation => "recommendation",
    };
    let mut record = TurnRecord {
        conversation_id: conversation.id,
        trigger_seq: message.seq,
        kind: kind.into(),
        state: BotState::Advisory.as_str().into(),
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_micros: 0,
        total_ms: 0,
        detail: Value::Null,
    };

    // What the reply may rely on, for the output rails.
    let context = OutputContext {
        max_product: profile.map(|p| p.max_product.as_str()),
        sources: &sources,
        client_words: text,
    };
    let mut gate = SentenceGate {
        guard: &desk.guard,
        context: &context,
        grounded: crate::guardrails::grounded_numbers(&context),
        sink,
        pending: String::new(),
        blocked: None,
    };
    let (body_text, used, answered, disclosures) = match &desk.writer.llm {
        None => {
            let (t, used, ok) = compose_offline(desk, text, language, ask, &cited, &recommended);
            (t, used, ok, ask == Ask::Recommendation && ok)
        }
        Some(llm) => {
            if sources.is_empty() {
                // Nothing to ground an answer on: say so without asking the model to guess.
                let (t, _, _) = compose_offline(desk, text, language, ask, &[], &[]);
                (t, Vec::new(), false, false)
            } else {
                let written = write_with_llm(
                    desk,
                    llm,
                    conversation,
                    message,
                    text,
                    ask,
                    &client_level,
                    &allowed,
                    &sources,
                    &mut |e| gate.push(e),
                )
                .await?;
                record.prompt_tokens = written.prompt_tokens as i64;
                record.completion_tokens = written.completion_tokens as i64;
                record.cost_micros = desk
                    .writer
                    .cost_micros(written.prompt_tokens, written.completion_tokens);
                detail["llm"] = written.detail;
                match written.text {
                    Some(t) => {
                        // The model cites by the sources' own numbers.
                        let used: Vec<(usize, usize)> = cited_numbers(&t, cited.len())
                            .into_iter()
                            .map(|i| (i + 1, i))
                            .collect();
                        let mut t = t;
                        if ask == Ask::Recommendation && !t.contains(&risk_warning(language)) {
                            t.push_str("\n\n");
                            t.push_str(&risk_warning(language));
                        }
                        (t, used, true, ask == Ask::Recommendation)
                    }
                    None => {
                        record.kind = format!("{kind}.unavailable");
                        (apology(language), Vec::new(), false, false)
                    }
                }
            }
        }
    };
    // The output rails on the whole reply (the stream was checked sentence by sentence).
    let verdict = desk
        .guard
        .output(&body_text, language, &context, Direction::Output);
    let blocked = gate
        .blocked
        .take()
        .or_else(|| verdict.blocked.as_ref().map(|b| b.0.clone()));
    let handoff = blocked.as_ref().filter(|rule| {
        desk.guard
            .rules()
            .iter()
            .any(|r| &r.id == *rule && (r.handoff || r.action == Action::Escalate))
    });
    detail["guardrails"] = json!({
        "output": verdict.decisions,
        "micros": verdict.micros,
        "blocked": blocked,
    });
    let (body_text, used, answered, mut disclosures) = match &blocked {
        Some(_) => (blocked_fallback(language), Vec::new(), false, Vec::new()),
        None => {
            let mut shown = Vec::new();
            if disclosures {
                shown.extend(["risk_warning", "past_performance"]);
            }
            if verdict
                .decisions
                .iter()
                .any(|d| d.action == Action::Rewrite)
            {
                shown.push("past_performance");
            }
            (verdict.text.clone(), used, answered, shown)
        }
    };
    disclosures.dedup();
    let citations: Vec<Value> = used.iter().map(|&(n, i)| cite(n, &cited[i])).collect();
    record.total_ms = started.elapsed().as_millis() as i64;
    detail["latency_ms"] = json!({
        "retrieval": retrieval_ms,
        "total": started.elapsed().as_secs_f64() * 1e3,
        "first_token": detail.pointer("/llm/first_token_ms").cloned().unwrap_or(Value::Null),
    });
    detail["output"] = json!(body_text);
    detail["citations"] = json!(citations);
    record.detail = detail;
    let mut body = json!({
        "text": body_text,
        "mode": desk.writer.mode(),
        "citations": citations,
        "offer_human_advisor": !answered,
    });
    if !disclosures.is_empty() {
        body["disclosures"] = json!(disclosures);
    }
    if ask == Ask::Recommendation && answered {
        // The products the reply presents: those it cites.
        body["products"] = json!(
            used.iter()
                .filter_map(|&(_, i)| recommended.get(i))
                .map(|(p, _)| json!({"id": p.sheet.id, "name": p.sheet.name.get(language), "risk_level": p.facts(&desk.pack).risk_level}))
                .collect::<Vec<_>>()
        );
    }
    Ok(Answered {
        reply: Reply {
            kind: if ask == Ask::Recommendation && answered {
                "recommendation"
            } else {
                "answer"
            },
            body,
        },
        record,
        answered,
        handoff: handoff.cloned(),
    })
}

/// What replaces a reply the output rails blocked.
fn blocked_fallback(language: Language) -> String {
    pick(
        language,
        "抱歉，我无法就这个问题给出合适的回答。建议您与人工顾问沟通，回复“人工”即可转接。",
        "Sorry, I can't give a proper answer to that. A human advisor can help: reply \"advisor\" to be connected.",
    )
}

/// Releases a streamed reply sentence by sentence, each only once the output rails
/// have passed it; a blocked sentence is never shown: what was shown is withdrawn and
/// nothing more of that attempt goes out.
struct SentenceGate<'g, 's> {
    guard: &'g crate::guardrails::Guard,
    context: &'g OutputContext<'g>,
    grounded: std::collections::HashSet<String>,
    sink: Sink<'s>,
    pending: String,
    blocked: Option<String>,
}

impl SentenceGate<'_, '_> {
    fn push(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::Reset { attempt } => {
                // A new attempt starts clean.
                self.pending.clear();
                self.blocked = None;
                (self.sink)(StreamEvent::Reset { attempt });
            }
            StreamEvent::Delta { attempt, text } => {
                if self.blocked.is_some() {
                    return;
                }
                self.pending.push_str(&text);
                while let Some(end) = sentence_end(&self.pending) {
                    let sentence: String = self.pending.drain(..end).collect();
                    if let Some(rule) = self.guard.sentence(&sentence, self.context, &self.grounded)
                    {
                        self.blocked = Some(rule);
                        self.pending.clear();
                        (self.sink)(StreamEvent::Reset { attempt });
                        return;
                    }
                    (self.sink)(StreamEvent::Delta {
                        attempt,
                        text: sentence,
                    });
                }
            }
        }
    }
}

/// The byte length of the first complete sentence of `text` (with the whitespace after
/// it), if there is one.
fn sentence_end(text: &str) -> Option<usize> {
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let ends = match c {
            '。' | '！' | '？' | '\n' => true,
            '.' | '!' | '?' => chars.peek().is_some_and(|(_, n)| n.is_whitespace()),
            _ => false,
        };
        if ends {
            let mut end = i + c.len_utf8();
            while let Some(&(j, n)) = chars.peek() {
                if !n.is_whitespace() {
                    break;
                }
                end = j + n.len_utf8();
                chars.next();
            }
            return Some(end);
        }
    }
    None
}

/// A product's sheet as a source when no chunk of it was retrieved.
fn sheet_citation(product: &Product, language: Language) -> Citation {
    Citation {
        chunk_id: String::new(),
        doc_id: product.sheet.id.clone(),
        kind: "product".into(),
        title: product.sheet.name.get(language).to_string(),
        section: String::new(),
        language: language.as_str().into(),
        product_id: Some(product.sheet.id.clone()),
        product_type: Some(product.sheet.kind.as_str().into()),
        risk_level: Some(product.sheet.risk_level.clone()),
        sri: Some(product.sheet.sri),
        version_hash: String::new(),
        snippet: String::new(),
        text: String::new(),
        score: 0.0,
    }
}

/// The offline reply: quoted sentences with their citations, or the suitable products
/// with their key facts. Returns the text, the sources it cites (`[n]` as written, the
/// source's index) and whether it answers.
fn compose_offline(
    desk: &Desk,
    text: &str,
    language: Language,
    ask: Ask,
    sources: &[Citation],
    recommended: &[(&Product, Option<Citation>)],
) -> (String, Vec<(usize, usize)>, bool) {
    match ask {
        Ask::Question => {
            let question = desk.knowledge.terms(text, language);
            let texts: Vec<&str> = sources.iter().map(|c| c.text.as_str()).collect();
            let terms = |t: &str| desk.knowledge.terms(t, language);
            let Some(picked) = offline::pick_sentences(&question, &texts, &terms) else {
                return (cannot_answer(language), Vec::new(), false);
            };
            let mut used: Vec<usize> = Vec::new();
            let mut out = String::new();
            for (i, p) in picked.iter().enumerate() {
                if !used.contains(&p.hit) {
                    used.push(p.hit);
                }
                let n = used.iter().position(|&h| h == p.hit).expect("just added") + 1;
                out.push_str(&p.text);
                // One marker after the last sentence of a run from the same source.
                if picked.get(i + 1).is_none_or(|next| next.hit != p.hit) {
                    out.push_str(&format!(" [{n}]"));
                }
                out.push(if language == Language::ZhCn {
                    '\n'
                } else {
                    ' '
                });
            }
            let cited = used
                .into_iter()
                .enumerate()
                .map(|(k, hit)| (k + 1, hit))
                .collect();
            (out.trim_end().to_string(), cited, true)
        }
        Ask::Recommendation => {
            if recommended.is_empty() {
                return (
                    pick(
                        language,
                        "目前没有同时符合您风险等级、投资期限和流动性需求的产品。我可以为您转接人工顾问进一步沟通。",
                        "No product currently fits your risk level, investment horizon and need for access to your money together. I can connect you with a human advisor to talk it through.",
                    ),
                    Vec::new(),
                    false,
                );
            }
            let mut out = pick(
                language,
                "根据您的风险评估，以下产品符合您的风险等级：",
                "Based on your risk assessment, these products are within your risk level:",
            );
            for (i, (product, _)) in recommended.iter().enumerate() {
                out.push_str(&format!(
                    "\n{}. {} [{}]",
                    i + 1,
                    key_facts(desk, product, language),
                    i + 1
                ));
            }
            out.push_str("\n\n");
            out.push_str(&risk_warning(language));
            (
                out,
                (0..recommended.len()).map(|i| (i + 1, i)).collect(),
                true,
            )
        }
    }
}

/// The `[n]` markers a written text uses, as source indices (0-based), in first-use order.
fn cited_numbers(text: &str, sources: usize) -> Vec<usize> {
    let mut used = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        for part in rest[..close].split([',', '，', ' ']) {
            if let Ok(n) = part.trim().parse::<usize>()
                && (1..=sources).contains(&n)
                && !used.contains(&(n - 1))
            {
                used.push(n - 1);
            }
        }
        rest = &rest[close..];
    }
    used
}

struct Written {
    text: Option<String>,
    prompt_tokens: u32,
    completion_tokens: u32,
    detail: Value,
}

/// Builds the prompt within the token budget and streams the model's reply.
#[allow(clippy::too_many_arguments)]
async fn write_with_llm(
    desk: &Desk,
    llm: &crate::llm::Llm,
    conversation: &Conversation,
    message: &Message,
    text: &str,
    ask: Ask,
    client_level: &str,
    allowed: &str,
    sources: &[String],
    sink: Sink<'_>,
) -> anyhow::Result<Written> {
    let language = conversation.language;
    let writer = &desk.writer;
    let today = crate::time_fmt::rfc3339(crate::time_fmt::now_ms());
    let system = writer.prompts.get(PromptKind::System, language).render(&[
        ("institution", &desk.bot.institution),
        ("today", &today[..10]),
        ("client_level", client_level),
        ("allowed_products", allowed),
    ]);
    let user_prompt = |context: &str| match ask {
        Ask::Question => writer.prompts.get(PromptKind::Answer, language).render(&[
            ("question", text),
            ("context", context),
            ("client_level", client_level),
        ]),
        Ask::Recommendation => writer
            .prompts
            .get(PromptKind::Recommendation, language)
            .render(&[
                ("question", text),
                ("candidates", context),
                ("allowed_products", allowed),
                ("client_level", client_level),
            ]),
    };
    let history = history(desk, conversation, message.seq).await?;
    let history_texts: Vec<String> = history.iter().map(|m| m.content.clone()).collect();
    let bare = user_prompt("");
    let plan = writer.budget.plan(
        &writer.counter,
        &[&system.text, &bare.text],
        sources,
        &history_texts,
    );
    let context: Vec<&str> = plan.context.iter().map(|&i| sources[i].as_str()).collect();
    let user = user_prompt(&context.join("\n\n"));
    let mut messages = vec![ChatMessage {
        role: ChatRole::System,
        content: system.text.clone(),
    }];
    messages.extend(history[history.len() - plan.history_kept..].iter().cloned());
    messages.push(ChatMessage {
        role: ChatRole::User,
        content: user.text.clone(),
    });
    let prompt_estimate = writer
        .counter
        .count_messages(messages.iter().map(|m| m.content.as_str()));
    let outcome = llm.stream(&messages, sink).await;
    let mut detail = json!({
        "model": llm.model(),
        "parameters": llm.parameters(),
        "prompts": {
            "system": { "id": system.id, "hash": system.hash },
            "user": { "id": user.id, "hash": user.hash },
        },
        "prompt_sent": messages,
        "budget": plan,
    });
    Ok(match outcome {
        Ok(c) => {
            let prompt_tokens = if c.usage_reported {
                c.prompt_tokens
            } else {
                prompt_estimate
            };
            let completion_tokens = if c.usage_reported {
                c.completion_tokens
            } else {
                writer.counter.count(&c.text)
            };
            detail["usage"] = json!({
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "reported": c.usage_reported,
            });
            detail["first_token_ms"] = json!(c.first_token_ms);
            detail["total_ms"] = json!(c.total_ms);
            detail["attempts"] = json!(c.attempts);
            detail["finish_reason"] = json!(c.finish_reason);
            detail["raw_output"] = json!(c.text);
            Written {
                text: Some(c.text.trim().to_string()),
                prompt_tokens,
                completion_tokens,
                detail,
            }
        }
        Err(failed) => {
            tracing::warn!(failure = %failed.failure, attempts = failed.attempts, "LLM reply failed");
            detail["failure"] = json!(failed);
            detail["total_ms"] = json!(failed.total_ms);
            // What a failed attempt was billed is unknown: count the prompts sent.
            let prompt_tokens = prompt_estimate * failed.attempts;
            detail["usage"] = json!({ "prompt_tokens": prompt_tokens, "completion_tokens": 0, "reported": false });
            Written {
                text: None,
                prompt_tokens,
                completion_tokens: 0,
                detail,
            }
        }
    })
}

/// Earlier messages of the conversation as chat history, oldest first (at most 40).
async fn history(
    desk: &Desk,
    conversation: &Conversation,
    before_seq: i64,
) -> anyhow::Result<Vec<ChatMessage>> {
    let from = (before_seq - 41).max(0);
    let messages =
        crate::im::store::list_messages(&desk.db, conversation.id, from, before_seq - 1 - from)
            .await?;
    Ok(messages
        .into_iter()
        .filter_map(|m| {
            let text = m.body.get("text").and_then(Value::as_str)?;
            let (role, content) = match m.sender.role.as_str() {
                // The model sees a client's words only with their identifiers replaced.
                "client" => (
                    ChatRole::User,
                    desk.guard.input(text, conversation.language).redacted,
                ),
                "bot" | "advisor" => (ChatRole::Assistant, text.to_string()),
                _ => return None,
            };
            Some(ChatMessage { role, content })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::cited_numbers;

    #[test]
    fn citation_markers_are_read_in_order_and_bounded() {
        assert_eq!(cited_numbers("A [2]. B [1, 2]. C [9].", 3), vec![1, 0]);
        assert_eq!(cited_numbers("无引用", 3), Vec::<usize>::new());
        assert_eq!(cited_numbers("见[3]和[1]", 3), vec![2, 0]);
    }
}
