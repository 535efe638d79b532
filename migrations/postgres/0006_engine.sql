-- The conversation engine: the bot's state per conversation, and turn records with
-- their state, token usage, estimated cost and latency as columns (summed per
-- conversation; the rest of the record stays in `detail`).
CREATE TABLE bot_states (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations (id),
    state           TEXT NOT NULL CHECK (state IN ('greeting', 'questionnaire', 'advisory', 'handoff', 'closed')),
    -- Bot replies in a row that could not answer (no grounded answer, LLM failure).
    misses          BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL
);

ALTER TABLE turn_records ADD COLUMN state TEXT NOT NULL DEFAULT '';
ALTER TABLE turn_records ADD COLUMN prompt_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE turn_records ADD COLUMN completion_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE turn_records ADD COLUMN cost_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE turn_records ADD COLUMN total_ms BIGINT NOT NULL DEFAULT 0;
