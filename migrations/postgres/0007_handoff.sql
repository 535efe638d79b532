-- Human handoff: who owns a conversation (the bot, the queue or one advisor) with a
-- fencing epoch that grows on every change of owner; the queue of handoffs; every
-- ownership event; advisors' presence, capacity, languages and skills.
ALTER TABLE conversations ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN advisor_id TEXT;

CREATE INDEX conversations_by_advisor ON conversations (advisor_id, mode);

CREATE TABLE handoffs (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    reason          TEXT NOT NULL,
    trigger_seq     BIGINT,
    priority        BIGINT NOT NULL,
    language        TEXT NOT NULL,
    skill           TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('queued', 'claimed', 'returned', 'closed')),
    requested_at    BIGINT NOT NULL,
    sla_due_at      BIGINT NOT NULL,
    escalated_at    BIGINT,
    claimed_at      BIGINT,
    advisor_id      TEXT,
    ended_at        BIGINT,
    disposition     TEXT,
    summary         TEXT,
    summary_source  TEXT
);

-- At most one open handoff per conversation.
CREATE UNIQUE INDEX handoffs_open_per_conversation ON handoffs (conversation_id)
    WHERE status IN ('queued', 'claimed');
CREATE INDEX handoffs_queue ON handoffs (status, priority, requested_at);
CREATE INDEX handoffs_by_conversation ON handoffs (conversation_id, requested_at);

CREATE TABLE handoff_events (
    id              BIGSERIAL PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    handoff_id      TEXT,
    epoch           BIGINT NOT NULL,
    at              BIGINT NOT NULL,
    actor_id        TEXT NOT NULL,
    actor_role      TEXT NOT NULL,
    event           TEXT NOT NULL,
    detail          TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX handoff_events_by_conversation ON handoff_events (conversation_id, id);

CREATE TABLE advisors (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('online', 'away', 'offline')),
    capacity     BIGINT NOT NULL,
    languages    TEXT NOT NULL,
    skills       TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);
