//! Token counting (tiktoken's BPE tables, built in) and the prompt budget: the model's
//! context window, less the completion reserve, is shared between the system prompt and
//! the question (always whole), the retrieved context (up to its share, most relevant
//! first) and the conversation history (whatever is left, newest first — the oldest
//! turns are dropped first).

use tiktoken_rs::CoreBPE;

/// Tokens every chat message costs besides its text (role and separators), and those
/// that prime the reply — OpenAI's published accounting for its chat models.
const PER_MESSAGE: u32 = 4;
const REPLY_PRIMING: u32 = 3;

/// Counts tokens with one of tiktoken's encodings.
#[derive(Clone, Copy)]
pub struct TokenCounter {
    bpe: &'static CoreBPE,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCounter")
    }
}

impl TokenCounter {
    /// `cl100k_base` or `o200k_base` (validated in the configuration).
    pub fn new(encoding: &str) -> TokenCounter {
        let bpe = match encoding {
            "o200k_base" => tiktoken_rs::o200k_base_singleton(),
            _ => tiktoken_rs::cl100k_base_singleton(),
        };
        TokenCounter { bpe }
    }

    pub fn count(&self, text: &str) -> u32 {
        self.bpe.encode_ordinary(text).len() as u32
    }

    /// Tokens of a message list as sent.
    pub fn count_messages<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> u32 {
        texts
            .into_iter()
            .map(|t| self.count(t) + PER_MESSAGE)
            .sum::<u32>()
            + REPLY_PRIMING
    }
}

/// The shares of one prompt.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub context_window: u32,
    pub max_completion: u32,
    /// Share of what is left after the fixed parts that retrieved context may take.
    pub context_share: f32,
}

/// What fits.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Plan {
    /// Indices of the context chunks kept, in the order given.
    pub context: Vec<usize>,
    /// How many of the most recent history messages are kept.
    pub history_kept: usize,
    pub history_trimmed: usize,
    pub context_trimmed: usize,
    /// Tokens of the prompt as planned (system, history, user message).
    pub prompt_tokens: u32,
    /// Tokens the prompt may use at most.
    pub prompt_limit: u32,
}

impl Budget {
    /// Plans a prompt: `fixed` are the texts always sent (system prompt and the user
    /// message without its context), `chunks` the context candidates by relevance,
    /// `history` earlier messages oldest first.
    pub fn plan(
        &self,
        counter: &TokenCounter,
        fixed: &[&str],
        chunks: &[String],
        history: &[String],
    ) -> Plan {
        let limit = self.context_window.saturating_sub(self.max_completion);
        let fixed_tokens = counter.count_messages(fixed.iter().copied());
        let mut left = limit.saturating_sub(fixed_tokens);
        let context_limit = (left as f32 * self.context_share) as u32;
        let mut context = Vec::new();
        let mut context_used = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let cost = counter.count(chunk) + 1;
            if context_used + cost <= context_limit {
                context_used += cost;
                context.push(i);
            }
        }
        left -= context_used;
        let mut history_kept = 0;
        for message in history.iter().rev() {
            let cost = counter.count(message) + PER_MESSAGE;
            if cost > left {
                break;
            }
            left -= cost;
            history_kept += 1;
        }
        Plan {
            context_trimmed: chunks.len() - context.len(),
            context,
            history_kept,
            history_trimmed: history.len() - history_kept,
            prompt_tokens: limit.saturating_sub(left).max(fixed_tokens),
            prompt_limit: limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_english_and_chinese() {
        let c = TokenCounter::new("cl100k_base");
        assert_eq!(c.count("hello world"), 2);
        assert!(c.count("赎回一般需要几个工作日到账？") > 5);
        assert!(TokenCounter::new("o200k_base").count("hello world") == 2);
    }

    #[test]
    fn oldest_history_goes_first_and_context_keeps_its_share() {
        let c = TokenCounter::new("cl100k_base");
        let budget = Budget {
            context_window: 1000,
            max_completion: 200,
            context_share: 0.5,
        };
        let chunks: Vec<String> = (0..10)
            .map(|i| format!("[{i}] {}", "fund fees ".repeat(30)))
            .collect();
        let history: Vec<String> = (0..40)
            .map(|i| format!("message {i} {}", "word ".repeat(20)))
            .collect();
        let plan = budget.plan(
            &c,
            &["You are the desk assistant.", "Question?"],
            &chunks,
            &history,
        );
        assert!(plan.prompt_tokens <= plan.prompt_limit, "{plan:?}");
        assert!(
            !plan.context.is_empty() && plan.context_trimmed > 0,
            "{plan:?}"
        );
        // The kept chunks are the most relevant ones, in order.
        assert_eq!(plan.context, (0..plan.context.len()).collect::<Vec<_>>());
        assert!(
            plan.history_kept > 0 && plan.history_trimmed > 0,
            "{plan:?}"
        );
        assert_eq!(plan.history_kept + plan.history_trimmed, 40);
        // With room for everything, nothing is trimmed.
        let roomy = Budget {
            context_window: 100_000,
            max_completion: 1000,
            context_share: 0.5,
        };
        let plan = roomy.plan(&c, &["s", "q"], &chunks, &history);
        assert_eq!((plan.context_trimmed, plan.history_trimmed), (0, 0));
    }
}
