//! One bot turn: read the client's message, decide, reply. The questionnaire runs here:
//! before any advice the client is assessed, one question at a time; answers are mapped
//! to options or re-asked, never guessed; the result is explained in plain words.

use std::sync::Arc;

use serde_json::{Value, json};

use super::answer::{self, Ask, Sink};
use super::session::{self, BotState, Effects, Session, SessionStatus};
use crate::config::BotConfig;
use crate::db::Db;
use crate::im::{Conversation, Language, Message};
use crate::knowledge::{Catalog, Product};
use crate::questionnaire::definition::{Pack, Question};
use crate::questionnaire::matching::{Mapped, map_answer, normalise};
use crate::questionnaire::profile::{self, RiskProfile};
use crate::questionnaire::scoring::{Answer, assess};
use crate::suitability::{self, Unsuitable};

/// What the bot needs for its turns.
#[derive(Debug, Clone)]
pub struct Desk {
    pub db: Db,
    /// The questionnaire this deployment uses (`questionnaire.pack`).
    pub pack: Arc<Pack>,
    pub validity_months: u32,
    /// The products the bot may discuss.
    pub catalog: Arc<Catalog>,
    /// Product sheets and FAQs, searched for every answer.
    pub knowledge: crate::knowledge::KnowledgeBase,
    /// The LLM (or the offline composer), prompts and token budget.
    pub writer: crate::llm::Writer,
    pub bot: BotConfig,
    /// The group-committed writer of leases and completed turns.
    pub ledger: super::ledger::Ledger,
    /// The input and output rails.
    pub guard: crate::guardrails::Guard,
    /// Ownership and the advisor queue.
    pub handoffs: crate::handoff::Handoffs,
}

/// A message the bot will send: its kind and body (always with a plain `text`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub kind: &'static str,
    pub body: Value,
}

impl Reply {
    fn text(text: String) -> Reply {
        Reply {
            kind: "text",
            body: json!({ "text": text }),
        }
    }
}

/// What the client wants, read from free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Human,
    Greeting,
    Assessment,
    MyProfile,
    Advice,
    Other,
}

const ASSESSMENT_WORDS: &[&str] = &[
    "风险测评",
    "风险评估",
    "测评",
    "问卷",
    "重新评估",
    "重新测评",
    "assessment",
    "questionnaire",
    "assessme",
    "retake",
    "reassess",
];
const PROFILE_WORDS: &[&str] = &[
    "我的风险等级",
    "风险等级",
    "我的等级",
    "风险类型",
    "myrisklevel",
    "myprofile",
    "mycategory",
    "risklevel",
    "riskprofile",
];
/// Words that ask for advice or products (facts about funds are questions, not this).
const ADVICE_WORDS: &[&str] = &[
    "推荐",
    "建议",
    "买什么",
    "买哪",
    "该买",
    "适合我",
    "recommend",
    "advice",
    "advise",
    "suggest",
    "shouldibuy",
    "shouldiinvest",
    "whattobuy",
    "whichfund",
    "whichproduct",
    "whattoinvest",
    "whereshouldiinvest",
];

/// Whole messages that ask for a person.
const HUMAN_REPLIES: &[&str] = &[
    "人工", "顾问", "客服", "真人", "advisor", "adviser", "agent", "human", "person",
];
/// Phrases that ask for a person anywhere in a message.
const HUMAN_PHRASES: &[&str] = &[
    "转人工",
    "人工客服",
    "人工顾问",
    "找人工",
    "真人",
    "理财经理",
    "客户经理",
    "humanadvisor",
    "realperson",
    "talktoaperson",
    "speaktoaperson",
    "talktoahuman",
    "speaktoahuman",
    "talktosomeone",
    "speaktosomeone",
    "talktoanadvisor",
    "speaktoanadvisor",
    "connectmewith",
    "connectmetoan",
];
const GREETINGS: &[&str] = &[
    "你好",
    "您好",
    "嗨",
    "在吗",
    "hi",
    "hello",
    "hey",
    "goodmorning",
    "goodafternoon",
    "goodevening",
];

fn intent(text: &str) -> Intent {
    let t = normalise(text);
    let has = |words: &[&str]| words.iter().any(|w| t.contains(&normalise(w)));
    let is = |words: &[&str]| words.iter().any(|w| normalise(w) == t);
    if is(HUMAN_REPLIES) || has(HUMAN_PHRASES) {
        Intent::Human
    } else if is(GREETINGS) {
        Intent::Greeting
    } else if has(ASSESSMENT_WORDS) {
        Intent::Assessment
    } else if has(PROFILE_WORDS) {
        Intent::MyProfile
    } else if has(ADVICE_WORDS) {
        Intent::Advice
    } else {
        Intent::Other
    }
}

/// Questionnaire commands, matched on the whole reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Back,
    Pause,
    Stop,
    Resume,
}

fn command(text: &str) -> Option<Command> {
    let t = normalise(text);
    let is = |words: &[&str]| words.iter().any(|w| normalise(w) == t);
    if is(&[
        "back",
        "goback",
        "previous",
        "上一题",
        "返回",
        "上一个",
        "返回上一题",
        "改上一题",
    ]) {
        Some(Command::Back)
    } else if is(&[
        "pause",
        "later",
        "notnow",
        "暂停",
        "稍后",
        "等一下",
        "以后再说",
    ]) {
        Some(Command::Pause)
    } else if is(&[
        "stop",
        "quit",
        "cancel",
        "exit",
        "退出",
        "取消",
        "不做了",
        "停止",
    ]) {
        Some(Command::Stop)
    } else if is(&["continue", "resume", "goon", "继续", "接着做", "继续测评"]) {
        Some(Command::Resume)
    } else {
        None
    }
}

pub(crate) fn pick(language: Language, zh: &str, en: &str) -> String {
    match language {
        Language::ZhCn => zh.to_string(),
        Language::En => en.to_string(),
    }
}

fn letter(index: usize) -> char {
    (b'A' + index as u8) as char
}

/// Runs one turn for a client message and returns the bot's replies; an advisory
/// reply written by the LLM streams through `sink` first. What the turn changes (the
/// questionnaire session, the engine state, the turn records) is left in `fx`, for the
/// worker to write with its cursor once the replies are committed; a completed profile
/// and a handoff are written at once.
pub async fn turn(
    desk: &Desk,
    fx: &mut Effects,
    conversation: &Conversation,
    message: &Message,
    sink: Sink<'_>,
) -> anyhow::Result<Vec<Reply>> {
    let (_, misses) = session::state(&desk.db, conversation.id).await?;
    let text = message
        .body
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let chars = text.chars().count();
    if chars > desk.bot.max_input_chars {
        fx.step(
            conversation.id,
            message.seq,
            "input.refused",
            json!({ "reason": "too_long", "chars": chars, "limit": desk.bot.max_input_chars }),
        );
        return Ok(vec![Reply::text(pick(
            conversation.language,
            &format!(
                "抱歉，您的消息太长了（{chars} 个字），我一次最多能处理 {} 个字。请把问题缩短，或分几条发送。",
                desk.bot.max_input_chars
            ),
            &format!(
                "Sorry, your message is too long for me ({chars} characters; I can take up to {}). Please shorten it or send it in parts.",
                desk.bot.max_input_chars
            ),
        ))]);
    }
    // The input rails, before anything else sees the message.
    let mut verdict = desk.guard.input(text, conversation.language);
    // A button press of the question being asked says our own option label: what the
    // rails found in it is recorded, but it neither refuses nor escalates the answer.
    let waived = (verdict.blocked.is_some() || verdict.escalated.is_some())
        && is_option_label(desk, conversation, message, text).await?;
    if waived {
        verdict.blocked = None;
        verdict.escalated = None;
    }
    if !verdict.decisions.is_empty() {
        fx.step(
            conversation.id,
            message.seq,
            "guardrails.input",
            json!({ "decisions": verdict.decisions, "micros": verdict.micros, "input_redacted": verdict.redacted, "waived_for_option_label": waived }),
        );
    }
    if let Some((rule, reply)) = verdict.blocked {
        let mut replies = vec![Reply {
            kind: "refusal",
            body: json!({ "text": reply, "guardrail": rule, "offer_human_advisor": true }),
        }];
        // Mid-questionnaire, the question stands: ask it again.
        if let Some(session) = session::load(&desk.db, conversation.id)
            .await?
            .filter(|s| s.status == SessionStatus::Active)
        {
            replies.push(question_reply(&desk.pack, &session, conversation.language));
        }
        return Ok(replies);
    }
    if let Some(rule) = verdict.escalated {
        // An explicit request keeps its plain name; other escalations name their rule.
        let reason = if rule == "IN-HUMAN-REQUEST" {
            "client_request"
        } else {
            rule.as_str()
        };
        let replies = hand_off(fx, conversation, message.seq, reason).await?;
        fx.state = Some((BotState::Handoff, 0));
        return Ok(replies);
    }
    let text = verdict.redacted.as_str();
    let (mut replies, answered) = dispatch(desk, fx, conversation, message, text, sink).await?;
    // The bot hands over when it keeps failing: at once when the LLM is down, else after
    // `handoff.max_bot_misses` replies in a row that could not answer.
    if !answered && fx.handoff.is_none() {
        let last = fx.records.last();
        // A model that answers badly is a miss like any other; one out of reach is down.
        let unavailable = last.is_some_and(|r| {
            r.kind.ends_with(".unavailable")
                && r.detail.pointer("/llm/failure/failure/kind") != Some(&json!("unusable"))
        });
        let blocked = last.is_some_and(|r| {
            r.detail
                .pointer("/guardrails/blocked")
                .is_some_and(|b| !b.is_null())
        });
        if unavailable || misses + 1 >= i64::from(desk.handoffs.config.max_bot_misses) {
            let reason = if unavailable {
                "llm_unavailable"
            } else if blocked {
                "repeated_blocks"
            } else {
                "bot_failed"
            };
            replies.extend(hand_off(fx, conversation, message.seq, reason).await?);
        }
    }
    let session = match &fx.session {
        Some(s) => Some(s.clone()),
        None => session::load(&desk.db, conversation.id).await?,
    };
    let state = match session {
        _ if replies.iter().any(|r| r.kind == "handoff") => BotState::Handoff,
        Some(s) if s.status == SessionStatus::Active => BotState::Questionnaire,
        _ if replies.iter().all(|r| r.kind == "greeting") => BotState::Greeting,
        _ => BotState::Advisory,
    };
    let misses = if answered { 0 } else { misses + 1 };
    fx.state = Some((state, misses));
    Ok(replies)
}

/// Whether `message` is a button press answering the question being asked, with that
/// option's label as its text.
async fn is_option_label(
    desk: &Desk,
    conversation: &Conversation,
    message: &Message,
    text: &str,
) -> anyhow::Result<bool> {
    let Some(answer) = message.body.get("answer") else {
        return Ok(false);
    };
    let Some(session) = session::load(&desk.db, conversation.id)
        .await?
        .filter(|s| s.status == SessionStatus::Active)
    else {
        return Ok(false);
    };
    let Some(question) = desk.pack.questions.get(session.position) else {
        return Ok(false);
    };
    let asked = answer.get("question_id").and_then(Value::as_str) == Some(question.id.as_str());
    let option = answer.get("option_id").and_then(Value::as_str);
    Ok(asked
        && question.options.iter().any(|o| {
            Some(o.id.as_str()) == option && o.label.get(conversation.language) == text.trim()
        }))
}

/// Routes a message to what handles it; the flag is false when the bot could not answer.
async fn dispatch(
    desk: &Desk,
    fx: &mut Effects,
    conversation: &Conversation,
    message: &Message,
    text: &str,
    sink: Sink<'_>,
) -> anyhow::Result<(Vec<Reply>, bool)> {
    let language = conversation.language;
    let chosen = message.body.get("answer");
    if chosen.is_none() && wants_to_proceed(text) && offered_unsuitable(desk, message).await? {
        return Ok((
            hand_off(fx, conversation, message.seq, "unsuitable_proceed").await?,
            true,
        ));
    }
    if chosen.is_none() && intent(text) == Intent::Human {
        return Ok((
            hand_off(fx, conversation, message.seq, "client_request").await?,
            true,
        ));
    }
    let session = session::load(&desk.db, conversation.id).await?;

    if let Some(mut session) = session
        .clone()
        .filter(|s| s.status == SessionStatus::Active)
    {
        return Ok((
            questionnaire_turn(
                desk,
                fx,
                conversation,
                message.seq,
                &mut session,
                text,
                chosen,
            )
            .await?,
            true,
        ));
    }
    let paused = session.filter(|s| s.status == SessionStatus::Paused);
    if let Some(mut session) = paused
        && (command(text) == Some(Command::Resume)
            || matches!(intent(text), Intent::Advice | Intent::Assessment))
    {
        session.status = SessionStatus::Active;
        fx.save_session(&session);
        let lead = pick(
            language,
            "欢迎回来，我们从上次停下的地方继续。",
            "Welcome back — let's continue where you left off.",
        );
        return Ok((
            vec![
                Reply::text(lead),
                question_reply(&desk.pack, &session, language),
            ],
            true,
        ));
    }

    if intent(text) != Intent::Assessment
        && let Some(product) = desk.catalog.mentioned(text)
    {
        return Ok((
            match profile::latest(&desk.db, &conversation.client_id).await? {
                Some(p) if p.valid => {
                    product_enquiry(desk, fx, conversation, message.seq, product, &p).await?
                }
                expired => start(desk, fx, conversation, message.seq, expired.as_ref()).await?,
            },
            true,
        ));
    }
    let replies = match intent(text) {
        Intent::Human => unreachable!("handled above"),
        Intent::Assessment => start(desk, fx, conversation, message.seq, None).await?,
        Intent::MyProfile => vec![Reply::text(
            match profile::latest(&desk.db, &conversation.client_id).await? {
                Some(p) if p.valid => profile_summary(&desk.pack, &p, language),
                Some(p) => pick(
                    language,
                    &format!(
                        "您上一次的风险评估（{}）已于 {} 过期。回复“风险测评”即可重新评估。",
                        p.level,
                        &p.expires_at[..10]
                    ),
                    &format!(
                        "Your last risk assessment ({}) expired on {}. Say \"assessment\" to take it again.",
                        p.level,
                        &p.expires_at[..10]
                    ),
                ),
                None => pick(
                    language,
                    "您还没有完成风险评估。回复“风险测评”即可开始，大约需要 3 分钟。",
                    "You have not been assessed yet. Say \"assessment\" to start; it takes about 3 minutes.",
                ),
            },
        )],
        Intent::Advice => match profile::latest(&desk.db, &conversation.client_id).await? {
            Some(p) if p.valid => {
                let answered = answer::answer(
                    desk,
                    conversation,
                    message,
                    text,
                    Some(&p),
                    Ask::Recommendation,
                    sink,
                )
                .await?;
                return settle(fx, conversation, message.seq, answered).await;
            }
            Some(p) => start(desk, fx, conversation, message.seq, Some(&p)).await?,
            None => start(desk, fx, conversation, message.seq, None).await?,
        },
        Intent::Greeting => vec![greeting(desk, language)],
        Intent::Other => {
            let profile = profile::current(&desk.db, &conversation.client_id).await?;
            let answered = answer::answer(
                desk,
                conversation,
                message,
                text,
                profile.as_ref(),
                Ask::Question,
                sink,
            )
            .await?;
            return settle(fx, conversation, message.seq, answered).await;
        }
    };
    Ok((replies, true))
}

/// Records an advisory turn and adds the handoff its guardrails asked for.
async fn settle(
    fx: &mut Effects,
    conversation: &Conversation,
    trigger_seq: i64,
    answered: answer::Answered,
) -> anyhow::Result<(Vec<Reply>, bool)> {
    fx.record(answered.record);
    let mut replies = vec![answered.reply];
    if let Some(rule) = answered.handoff {
        replies.extend(hand_off(fx, conversation, trigger_seq, &rule).await?);
    }
    Ok((replies, answered.answered))
}

/// Who the bot is and what it can do, labelled with how it writes.
fn greeting(desk: &Desk, language: Language) -> Reply {
    let mut text = pick(
        language,
        "您好，我是智能理财助手。我可以为您做风险承受能力评估、介绍与您风险等级相符的产品、解答理财问题，也可以随时为您转接人工顾问（回复“人工”）。",
        "Hello, I'm the advisory desk assistant. I can assess your risk tolerance, present products that match your risk level, answer questions about investing, and connect you with a human advisor at any time (reply \"advisor\").",
    );
    if desk.writer.llm.is_none() {
        text.push_str(&pick(
            language,
            "（当前为离线模式：回答直接摘自我们的产品资料和常见问题，并注明出处。）",
            " (Offline mode: my answers quote our product sheets and FAQs directly, with their sources.)",
        ));
    }
    Reply {
        kind: "greeting",
        body: json!({ "text": text, "mode": desk.writer.mode() }),
    }
}

/// Whether a client message asks for a person (the words the engine knows, or the
/// guardrails' request-for-a-person rule).
pub fn asks_for_human(desk: &Desk, message: &Message, language: Language) -> bool {
    let text = message
        .body
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    intent(text) == Intent::Human
        || desk.guard.input(text, language).escalated.as_deref() == Some("IN-HUMAN-REQUEST")
}

/// Words that insist on going ahead (after the bot said a product does not suit).
const PROCEED_PHRASES: &[&str] = &[
    "还是想买",
    "仍然想买",
    "还是要买",
    "坚持购买",
    "我要买",
    "我想买",
    "继续购买",
    "还是想",
    "proceedanyway",
    "stillwant",
    "buyitanyway",
    "iwanttobuy",
    "iwanttoproceed",
    "goahead",
    "anyway",
];

fn wants_to_proceed(text: &str) -> bool {
    let squashed = normalise(text);
    PROCEED_PHRASES.iter().any(|p| squashed.contains(p))
        || ["yes", "是的", "好的", "proceed", "要"].contains(&squashed.as_str())
}

/// Whether the bot's newest message before `message` said a product does not suit the
/// client and offered an advisor.
async fn offered_unsuitable(desk: &Desk, message: &Message) -> anyhow::Result<bool> {
    let from = (message.seq - 6).max(0);
    let earlier =
        crate::im::store::list_messages(&desk.db, message.conversation_id, from, 6).await?;
    Ok(earlier
        .iter()
        .rfind(|m| m.seq < message.seq && m.sender.role == "bot")
        .is_some_and(|m| {
            m.kind == "product" && m.body["offer_human_advisor"].as_bool() == Some(true)
        }))
}

/// Hands the conversation to the advisor queue: the turn's replies end with this one,
/// and the worker queues the handoff in the same transaction as them, so the bot goes
/// silent from here.
async fn hand_off(
    fx: &mut Effects,
    conversation: &Conversation,
    trigger_seq: i64,
    reason: &str,
) -> anyhow::Result<Vec<Reply>> {
    let language = conversation.language;
    fx.handoff = Some((reason.to_string(), trigger_seq));
    fx.step(
        conversation.id,
        trigger_seq,
        "handoff.requested",
        json!({ "reason": reason }),
    );
    Ok(vec![Reply {
        kind: "handoff",
        body: json!({
            "text": if reason == "client_request" {
                pick(
                    language,
                    "好的，正在为您转接人工顾问。顾问会看到我们之前的全部对话，您不需要重复说明。请稍候。",
                    "Of course — I'm connecting you with a human advisor. They will see our whole conversation, so you won't need to repeat yourself. Please wait a moment.",
                )
            } else {
                pick(
                    language,
                    "这个问题最好由人工顾问来帮您处理，我正在为您转接。顾问会看到我们之前的全部对话，您不需要重复说明。请稍候。",
                    "This is best handled by a human advisor, so I'm connecting you with one now. They will see our whole conversation, so you won't need to repeat yourself. Please wait a moment.",
                )
            },
            "handoff": { "reason": reason, "status": "queued" },
        }),
    }])
}

/// Begins a new assessment, explaining why it is needed.
async fn start(
    desk: &Desk,
    fx: &mut Effects,
    conversation: &Conversation,
    trigger_seq: i64,
    expired: Option<&RiskProfile>,
) -> anyhow::Result<Vec<Reply>> {
    let pack = &desk.pack;
    let language = conversation.language;
    let session = Session {
        conversation_id: conversation.id,
        client_id: conversation.client_id.clone(),
        questionnaire_id: pack.id.clone(),
        questionnaire_version: pack.version.clone(),
        position: 0,
        answers: vec![None; pack.questions.len()],
        status: SessionStatus::Active,
    };
    fx.save_session(&session);
    fx.step(conversation.id, trigger_seq, "questionnaire.started", json!({ "questionnaire_id": pack.id, "version": pack.version, "expired_profile": expired.map(|p| &p.id) }));
    let mut why = String::new();
    if let Some(p) = expired {
        why.push_str(&pick(
            language,
            &format!("您的风险评估已于 {} 过期，", &p.expires_at[..10]),
            &format!("Your risk assessment expired on {}. ", &p.expires_at[..10]),
        ));
    }
    why.push_str(pack.intro.get(language));
    Ok(vec![
        Reply::text(why),
        question_reply(pack, &session, language),
    ])
}

/// The bot message asking the session's current question: options for buttons, and a
/// plain-text fallback.
fn question_reply(pack: &Pack, session: &Session, language: Language) -> Reply {
    let question = &pack.questions[session.position];
    let total = pack.questions.len();
    let number = session.position + 1;
    let mut text = pick(
        language,
        &format!("问题 {number}/{total}：{}", question.text.get(language)),
        &format!(
            "Question {number} of {total}: {}",
            question.text.get(language)
        ),
    );
    for (i, option) in question.options.iter().enumerate() {
        text.push_str(&format!("\n{}. {}", letter(i), option.label.get(language)));
    }
    text.push('\n');
    text.push_str(&pick(
        language,
        "请回复选项字母或序号（回复“上一题”可修改上一个回答，“暂停”稍后继续，“退出”结束测评）。",
        "Reply with the letter or number of your choice (say \"back\" to change the previous answer, \"pause\" to continue later, \"stop\" to end).",
    ));
    let previous = session.answers.get(session.position).cloned().flatten();
    Reply {
        kind: "question",
        body: json!({
            "text": text,
            "question": {
                "questionnaire_id": pack.id,
                "questionnaire_version": pack.version,
                "question_id": question.id,
                "index": number,
                "total": total,
                "text": question.text.get(language),
                "options": question.options.iter().enumerate().map(|(i, o)| json!({
                    "id": o.id,
                    "letter": letter(i).to_string(),
                    "number": i + 1,
                    "label": o.label.get(language),
                })).collect::<Vec<_>>(),
                "previous_answer": previous,
            }
        }),
    }
}

fn options_list(question: &Question, language: Language, indices: Option<&[usize]>) -> String {
    question
        .options
        .iter()
        .enumerate()
        .filter(|(i, _)| indices.is_none_or(|set| set.contains(i)))
        .map(|(i, o)| format!("{}. {}", letter(i), o.label.get(language)))
        .collect::<Vec<_>>()
        .join(match language {
            Language::ZhCn => "；",
            Language::En => "; ",
        })
}

async fn questionnaire_turn(
    desk: &Desk,
    fx: &mut Effects,
    conversation: &Conversation,
    trigger_seq: i64,
    session: &mut Session,
    text: &str,
    chosen: Option<&Value>,
) -> anyhow::Result<Vec<Reply>> {
    let pack = &desk.pack;
    let language = conversation.language;
    let question = &pack.questions[session.position.min(pack.questions.len() - 1)];
    if chosen.is_none() {
        match command(text) {
            Some(Command::Back) => {
                let lead = if session.position == 0 {
                    pick(
                        language,
                        "这已经是第一题了。",
                        "This is the first question.",
                    )
                } else {
                    session.position -= 1;
                    fx.save_session(session);
                    pick(
                        language,
                        "好的，我们回到上一题，您可以修改答案。",
                        "Sure — here is the previous question again; you can change your answer.",
                    )
                };
                return Ok(vec![
                    Reply::text(lead),
                    question_reply(pack, session, language),
                ]);
            }
            Some(Command::Pause) => {
                session.status = SessionStatus::Paused;
                fx.save_session(session);
                return Ok(vec![Reply::text(pick(
                    language,
                    &format!(
                        "已为您保存进度（第 {}/{} 题）。随时回复“继续”即可接着做，换设备也可以。",
                        session.position + 1,
                        pack.questions.len()
                    ),
                    &format!(
                        "Your progress is saved (question {} of {}). Say \"continue\" any time — on any device — to pick up where you left off.",
                        session.position + 1,
                        pack.questions.len()
                    ),
                ))]);
            }
            Some(Command::Stop) => {
                session.status = SessionStatus::Stopped;
                fx.save_session(session);
                fx.step(
                    conversation.id,
                    trigger_seq,
                    "questionnaire.stopped",
                    json!({ "at_question": question.id }),
                );
                return Ok(vec![Reply::text(pick(
                    language,
                    "已结束本次测评，您的风险等级没有改变。完成风险评估之前，我无法为您提供投资建议；回复“风险测评”可随时重新开始，也可以要求转接人工顾问。",
                    "The assessment has ended and your risk profile is unchanged. I cannot give investment advice until an assessment is complete; say \"assessment\" to start again at any time, or ask for a human advisor.",
                ))]);
            }
            Some(Command::Resume) => return Ok(vec![question_reply(pack, session, language)]),
            None => {}
        }
    }

    // An option read from free text by the LLM is said back, so a misreading is seen.
    let mut understood = None;
    // A button press names its question; it must be the one being asked.
    let mapped = match chosen {
        Some(answer) => {
            let asked =
                answer.get("question_id").and_then(Value::as_str) == Some(question.id.as_str());
            let option = answer.get("option_id").and_then(Value::as_str);
            match option.and_then(|o| question.options.iter().position(|x| x.id == o)) {
                Some(index) if asked => Mapped::Option(index),
                _ => {
                    return Ok(vec![
                        Reply::text(pick(
                            language,
                            "这个回答对应的不是当前的问题。请回答下面这道题：",
                            "That answer belongs to a different question. Please answer this one:",
                        )),
                        question_reply(pack, session, language),
                    ]);
                }
            }
        }
        None => match map_answer(question, text) {
            Mapped::Unknown if desk.writer.llm.is_some() && !text.trim().is_empty() => {
                match map_with_llm(desk, fx, conversation, trigger_seq, question, text).await? {
                    Some(index) => {
                        understood = Some(index);
                        Mapped::Option(index)
                    }
                    None => Mapped::Unknown,
                }
            }
            mapped => mapped,
        },
    };
    let index = match mapped {
        Mapped::Option(index) => index,
        Mapped::Ambiguous(candidates) => {
            return Ok(vec![Reply::text(pick(
                language,
                &format!(
                    "您的回答可能对应多个选项：{}。请回复其中一个选项的字母。",
                    options_list(question, language, Some(&candidates))
                ),
                &format!(
                    "Your reply could mean more than one option: {}. Please reply with one letter.",
                    options_list(question, language, Some(&candidates))
                ),
            ))]);
        }
        Mapped::Unknown => {
            return Ok(vec![Reply::text(pick(
                language,
                &format!(
                    "抱歉，我没能把您的回答对应到选项。请从以下选项中选择（回复字母或序号）：{}",
                    options_list(question, language, None)
                ),
                &format!(
                    "Sorry, I couldn't match that to an option. Please choose one (reply with its letter or number): {}",
                    options_list(question, language, None)
                ),
            ))]);
        }
    };
    session.answers[session.position] = Some(question.options[index].id.clone());
    // Next unanswered question after this one (going back then forward keeps answers).
    let next = (session.position + 1..pack.questions.len()).find(|i| session.answers[*i].is_none());
    match next {
        Some(position) => {
            session.position = position;
            fx.save_session(session);
            let mut replies = Vec::new();
            if let Some(index) = understood {
                replies.push(Reply::text(pick(
                    language,
                    &format!(
                        "我理解您的回答是：{}. {}（如不对，回复“上一题”修改）",
                        letter(index),
                        question.options[index].label.get(language)
                    ),
                    &format!(
                        "I took that as {}. {} (say \"back\" if that's not right).",
                        letter(index),
                        question.options[index].label.get(language)
                    ),
                )));
            }
            replies.push(question_reply(pack, session, language));
            Ok(replies)
        }
        None if session.answers.iter().all(Option::is_some) => {
            finish(desk, fx, conversation, trigger_seq, session).await
        }
        None => {
            session.position = session
                .answers
                .iter()
                .position(Option::is_none)
                .unwrap_or(0);
            fx.save_session(session);
            Ok(vec![question_reply(pack, session, language)])
        }
    }
}

/// Asks the LLM which option a free-text reply chooses. Only an unambiguous single
/// letter counts; anything else (NONE, prose, a failure) leaves the question re-asked.
async fn map_with_llm(
    desk: &Desk,
    fx: &mut Effects,
    conversation: &Conversation,
    trigger_seq: i64,
    question: &Question,
    reply: &str,
) -> anyhow::Result<Option<usize>> {
    let Some(llm) = &desk.writer.llm else {
        return Ok(None);
    };
    let language = conversation.language;
    let options = options_list(question, language, None).replace(['；', ';'], "\n");
    let prompt = desk
        .writer
        .prompts
        .get(crate::llm::PromptKind::AnswerMapping, language)
        .render(&[
            ("question", question.text.get(language)),
            ("options", &options),
            ("reply", reply),
        ]);
    let messages = [crate::llm::ChatMessage {
        role: crate::llm::ChatRole::User,
        content: prompt.text.clone(),
    }];
    let outcome = llm.stream(&messages, &mut |_| {}).await;
    let (raw, index) = match &outcome {
        Ok(c) => {
            let answer = c.text.trim().trim_end_matches('.').to_ascii_uppercase();
            let index = (answer.len() == 1)
                .then(|| answer.as_bytes()[0])
                .filter(u8::is_ascii_uppercase)
                .map(|b| (b - b'A') as usize)
                .filter(|i| *i < question.options.len());
            (Some(c.text.clone()), index)
        }
        Err(_) => (None, None),
    };
    let (prompt_tokens, completion_tokens) = match &outcome {
        Ok(c) => (c.prompt_tokens, c.completion_tokens),
        Err(_) => (0, 0),
    };
    fx.record(session::TurnRecord {
        conversation_id: conversation.id,
        trigger_seq,
        kind: "questionnaire.mapped".into(),
        state: BotState::Questionnaire.as_str().into(),
        prompt_tokens: prompt_tokens as i64,
        completion_tokens: completion_tokens as i64,
        cost_micros: desk.writer.cost_micros(prompt_tokens, completion_tokens),
        total_ms: 0,
        detail: json!({
            "question_id": question.id,
            "input": reply,
            "prompt": { "id": prompt.id, "hash": prompt.hash },
            "model": llm.model(),
            "parameters": llm.parameters(),
            "raw_output": raw,
            "failure": outcome.as_ref().err().map(|f| &f.failure),
            "option": index.map(|i| &question.options[i].id),
        }),
    });
    Ok(index)
}

async fn finish(
    desk: &Desk,
    fx: &mut Effects,
    conversation: &Conversation,
    trigger_seq: i64,
    session: &mut Session,
) -> anyhow::Result<Vec<Reply>> {
    let pack = &desk.pack;
    let language = conversation.language;
    let answers: Vec<Answer> = pack
        .questions
        .iter()
        .zip(&session.answers)
        .map(|(q, a)| Answer {
            question_id: q.id.clone(),
            option_id: a.clone().unwrap_or_default(),
        })
        .collect();
    let assessment = match assess(pack, &answers) {
        Ok(assessment) => assessment,
        Err(e) => {
            // Only a pack changed under a running session gets here: start over cleanly.
            tracing::warn!(error = %e, "questionnaire answers no longer fit the pack; restarting");
            return start(desk, fx, conversation, trigger_seq, None).await;
        }
    };
    let stored = profile::save(
        &desk.db,
        &conversation.client_id,
        Some(conversation.id),
        &answers,
        &assessment,
        desk.validity_months,
    )
    .await?;
    session.status = SessionStatus::Completed;
    fx.save_session(session);
    fx.step(
        conversation.id,
        trigger_seq,
        "questionnaire.scored",
        json!({ "profile_id": stored.id, "answers": answers, "assessment": assessment }),
    );
    Ok(vec![Reply {
        kind: "assessment",
        body: json!({
            "text": result_text(pack, &stored, language, desk.validity_months),
            "profile": {
                "id": stored.id,
                "level": stored.level,
                "level_name": pack.level(&stored.level).map(|l| l.name.get(language)),
                "score": stored.score,
                "max_product": stored.max_product,
                "allowed_products": allowed_products(pack, &stored.max_product),
                "expires_at": stored.expires_at,
                "overrides": stored.assessment.overrides.iter().map(|o| json!({"question_id": o.question_id, "cap": o.cap, "reason": o.reason.get(language)})).collect::<Vec<_>>(),
            }
        }),
    }])
}

pub(crate) fn allowed_products(pack: &Pack, max_product: &str) -> Vec<String> {
    let top = pack.product_rank(max_product).unwrap_or(0);
    pack.product_levels[..=top].to_vec()
}

fn level_span(pack: &Pack, max_product: &str) -> String {
    let allowed = allowed_products(pack, max_product);
    match (allowed.first(), allowed.last()) {
        (Some(a), Some(b)) if a != b => format!("{a}–{b}"),
        (Some(a), _) => a.clone(),
        _ => String::new(),
    }
}

/// One or two sentences on a valid profile.
fn profile_summary(pack: &Pack, p: &RiskProfile, language: Language) -> String {
    let name = pack
        .level(&p.level)
        .map(|l| l.name.get(language).to_string())
        .unwrap_or_default();
    let span = level_span(pack, &p.max_product);
    pick(
        language,
        &format!(
            "您当前的风险承受能力等级为 {}（{}），适合风险等级 {} 的产品，评估有效期至 {}。",
            p.level,
            name,
            span,
            &p.expires_at[..10]
        ),
        &format!(
            "Your current risk category is {} ({}), which allows products rated {}; the assessment is valid until {}.",
            p.level,
            name,
            span,
            &p.expires_at[..10]
        ),
    )
}

/// The result in plain words: level, meaning, main reasons, allowed products, validity.
fn result_text(pack: &Pack, p: &RiskProfile, language: Language, months: u32) -> String {
    let level = pack.level(&p.level);
    let name = level.map(|l| l.name.get(language)).unwrap_or_default();
    let meaning = level.map(|l| l.meaning.get(language)).unwrap_or_default();
    let describe = |question_id: &str, option_id: &str| -> Option<String> {
        let q = pack.question(question_id)?;
        let o = q.options.iter().find(|o| o.id == option_id)?;
        Some(format!(
            "{}：{}",
            q.text.get(language).trim_end_matches(['？', '?']),
            o.label.get(language)
        ))
    };
    let reasons: Vec<String> = p
        .assessment
        .drivers
        .iter()
        .filter_map(|d| describe(&d.question_id, &d.option_id))
        .collect();
    let caps: Vec<String> = p
        .assessment
        .overrides
        .iter()
        .filter(|o| o.cap == p.level)
        .map(|o| o.reason.get(language).to_string())
        .collect();
    let span = level_span(pack, &p.max_product);
    let until = &p.expires_at[..10];
    match language {
        Language::ZhCn => {
            let mut text = format!(
                "评估完成：您的风险承受能力等级为 {}（{}），得分 {}。{}",
                p.level, name, p.score, meaning
            );
            if !reasons.is_empty() {
                text.push_str(&format!("\n主要依据：{}。", reasons.join("；")));
            }
            if p.level != p.assessment.score_level && !caps.is_empty() {
                text.push_str(&format!(
                    "\n按得分本应为 {}，但{}因此等级调整为 {}。",
                    p.assessment.score_level,
                    caps.join(""),
                    p.level
                ));
            }
            text.push_str(&format!("\n根据适当性要求，我们可以向您介绍风险等级为 {span} 的产品，不会向您推荐更高风险的产品。"));
            text.push_str(&format!("\n本评估有效期 {months} 个月，至 {until}；如您的情况发生变化，可随时回复“风险测评”重新评估。"));
            text
        }
        Language::En => {
            let mut text = format!(
                "Assessment complete: your risk category is {} ({}), with a score of {}. {}",
                p.level, name, p.score, meaning
            );
            if !reasons.is_empty() {
                text.push_str(&format!(
                    "\nMain reasons: {}.",
                    reasons.join("; ").replace('：', ": ")
                ));
            }
            if p.level != p.assessment.score_level && !caps.is_empty() {
                text.push_str(&format!(
                    "\nYour score alone would place you in {}, but {} So your category is {}.",
                    p.assessment.score_level,
                    caps.join(" "),
                    p.level
                ));
            }
            text.push_str(&format!("\nUnder the suitability rules we may present products rated {span}, and will not recommend anything riskier."));
            text.push_str(&format!("\nThis assessment is valid for {months} months, until {until}; say \"assessment\" any time your situation changes to take it again."));
            text
        }
    }
}

/// A client asks about one product: its key facts, then plainly whether it suits their
/// assessed profile. Never encouraging; above their level, a human advisor is offered.
async fn product_enquiry(
    desk: &Desk,
    fx: &mut Effects,
    conversation: &Conversation,
    trigger_seq: i64,
    product: &Product,
    profile: &RiskProfile,
) -> anyhow::Result<Vec<Reply>> {
    let language = conversation.language;
    let pack = &desk.pack;
    let facts = product.facts(pack);
    let verdict = suitability::assess(pack, &profile.facts(), &facts);
    let s = &product.sheet;
    let lockup = match (s.lockup_months, language) {
        (0, Language::ZhCn) => "无锁定期".to_string(),
        (0, Language::En) => "no lock-up".to_string(),
        (m, Language::ZhCn) => format!("锁定期 {m} 个月"),
        (m, Language::En) => format!("a {m}-month lock-up"),
    };
    let mut text = match language {
        Language::ZhCn => format!(
            "{}（{}）是一只{}，风险等级 {}（SRI {}），起购金额 {} {}，{}，赎回到账约 {} 天。",
            s.name.zh,
            s.id,
            s.kind.label().zh,
            facts.risk_level,
            s.sri,
            s.minimum_investment,
            s.currency,
            lockup,
            s.redemption_days
        ),
        Language::En => format!(
            "{} ({}) is a {} rated {} (SRI {}); minimum investment {} {}; {}; redemption pays out in about {} days.",
            s.name.en,
            s.id,
            s.kind.label().en,
            facts.risk_level,
            s.sri,
            s.minimum_investment,
            s.currency,
            lockup,
            s.redemption_days
        ),
    };
    if s.principal_protected {
        text.push_str(&pick(
            language,
            "本金保障仅在持有到期时适用。",
            " Principal protection applies only if it is held to maturity.",
        ));
    }
    text.push('\n');
    if verdict.eligible {
        text.push_str(&pick(
            language,
            &format!(
                "该产品的风险等级在您的评估等级 {}（可接受至 {}）范围之内。",
                profile.level, profile.max_product
            ),
            &format!(
                "Its risk level is within your assessed category {} (products up to {}).",
                profile.level, profile.max_product
            ),
        ));
    } else {
        for reason in &verdict.reasons {
            text.push_str(&unsuitable_text(reason, profile, language));
        }
        text.push_str(&pick(
            language,
            "因此我不能向您推荐该产品。如您仍希望了解，我可以为您转接人工顾问。",
            " So I cannot recommend this product to you. If you would still like to discuss it, I can connect you with a human advisor.",
        ));
    }
    fx.step(
        conversation.id,
        trigger_seq,
        "product.enquiry",
        json!({ "product_id": s.id, "profile_id": profile.id, "facts": facts, "verdict": verdict }),
    );
    Ok(vec![Reply {
        kind: "product",
        body: json!({
            "text": text,
            "product": { "id": s.id, "name": s.name.get(language), "risk_level": facts.risk_level, "sri": s.sri },
            "suitability": verdict,
            "offer_human_advisor": !verdict.eligible,
            "mode": desk.writer.mode(),
            "citations": [{
                "n": 1,
                "doc_id": s.id,
                "kind": "product",
                "title": s.name.get(language),
                "section": "",
                "product_id": s.id,
            }],
        }),
    }])
}

fn unsuitable_text(reason: &Unsuitable, profile: &RiskProfile, language: Language) -> String {
    match reason {
        Unsuitable::RiskAboveLevel {
            product_level,
            allowed_up_to,
        } => pick(
            language,
            &format!(
                "请注意：该产品风险等级为 {product_level}，高于您的评估等级 {}（仅适合 {allowed_up_to} 及以下的产品）。",
                profile.level
            ),
            &format!(
                "Please note: it is rated {product_level}, above your assessed category {}, which allows products up to {allowed_up_to}.",
                profile.level
            ),
        ),
        Unsuitable::UnratedOnScale { product_level } => pick(
            language,
            &format!("该产品没有按本问卷的风险等级评级（{product_level}），无法为您评估适当性。"),
            &format!(
                " It is not rated on this questionnaire's scale ({product_level}), so its suitability cannot be assessed."
            ),
        ),
        Unsuitable::LockupBeyondHorizon {
            lockup_months,
            horizon_months,
        } => pick(
            language,
            &format!(
                "该产品锁定 {lockup_months} 个月，超过您表示可以投资的 {horizon_months} 个月。"
            ),
            &format!(
                " It locks your money for {lockup_months} months, longer than the {horizon_months} months you said you can invest."
            ),
        ),
        Unsuitable::RedemptionTooSlow {
            redemption_days, ..
        } => pick(
            language,
            &format!("该产品赎回约需 {redemption_days} 天到账，不符合您对资金流动性的需求。"),
            &format!(
                " It takes about {redemption_days} days to pay out, slower than your need for access to your money."
            ),
        ),
        Unsuitable::MinimumAboveAssets {
            minimum_investment,
            investable_assets_max,
        } => pick(
            language,
            &format!(
                "该产品起购金额 {minimum_investment}，高于您的可投资资产（{investable_assets_max} 以下）。"
            ),
            &format!(
                " Its minimum investment of {minimum_investment} is above your investable assets (below {investable_assets_max})."
            ),
        ),
    }
}
