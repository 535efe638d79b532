//! The language side of the bot: prompt templates, token budgets, the OpenAI-compatible
//! LLM client, and the offline composer used when no LLM is configured.

pub mod fake;
pub mod offline;
pub mod openai;
pub mod prompts;
pub mod tokens;

use std::sync::Arc;

pub use openai::{ChatMessage, ChatRole, Completion, Failed, Llm, LlmFailure, StreamEvent};
pub use prompts::{PromptKind, Prompts, Rendered};
pub use tokens::{Budget, Plan, TokenCounter};

use crate::config::LlmConfig;

/// How the bot writes its answers.
#[derive(Debug, Clone)]
pub struct Writer {
    /// `None`: offline (answers composed from the retrieved knowledge).
    pub llm: Option<Arc<Llm>>,
    pub prompts: Arc<Prompts>,
    pub counter: TokenCounter,
    pub budget: Budget,
    pub prompt_price_per_1k: f64,
    pub completion_price_per_1k: f64,
}

impl Writer {
    pub fn new(config: &LlmConfig, prompts: Prompts) -> Writer {
        Writer {
            llm: config.base_url.as_ref().map(|_| Arc::new(Llm::new(config))),
            prompts: Arc::new(prompts),
            counter: TokenCounter::new(&config.tokenizer),
            budget: Budget {
                context_window: config.context_window,
                max_completion: config.max_tokens,
                context_share: config.context_share,
            },
            prompt_price_per_1k: config.prompt_price_per_1k,
            completion_price_per_1k: config.completion_price_per_1k,
        }
    }

    /// `llm` or `offline`, as replies and the chat page label it.
    pub fn mode(&self) -> &'static str {
        if self.llm.is_some() { "llm" } else { "offline" }
    }

    /// Estimated cost in millionths of `llm.cost_currency`.
    pub fn cost_micros(&self, prompt_tokens: u32, completion_tokens: u32) -> i64 {
        let cost = prompt_tokens as f64 / 1000.0 * self.prompt_price_per_1k
            + completion_tokens as f64 / 1000.0 * self.completion_price_per_1k;
        (cost * 1e6).round() as i64
    }
}
