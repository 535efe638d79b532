-- Risk profiles (history kept: a new assessment supersedes, never overwrites), the
-- questionnaire in progress per conversation, the bot's position in each conversation,
-- and the record of each bot turn.

CREATE TABLE risk_profiles (
    id                    TEXT PRIMARY KEY,
    client_id             TEXT NOT NULL REFERENCES participants (id),
    questionnaire_id      TEXT NOT NULL,
    questionnaire_version TEXT NOT NULL,
    answers               TEXT NOT NULL,
    assessment            TEXT NOT NULL,
    score                 BIGINT NOT NULL,
    level                 TEXT NOT NULL,
    max_product           TEXT NOT NULL,
    conversation_id       TEXT,
    assessed_at           BIGINT NOT NULL,
    expires_at            BIGINT NOT NULL,
    superseded_at         BIGINT
);

CREATE INDEX risk_profiles_by_client ON risk_profiles (client_id, assessed_at);

CREATE TABLE questionnaire_sessions (
    conversation_id       TEXT PRIMARY KEY REFERENCES conversations (id),
    client_id             TEXT NOT NULL,
    questionnaire_id      TEXT NOT NULL,
    questionnaire_version TEXT NOT NULL,
    position              BIGINT NOT NULL,
    answers               TEXT NOT NULL,
    status                TEXT NOT NULL CHECK (status IN ('active', 'paused', 'stopped', 'completed')),
    updated_at            BIGINT NOT NULL
);

CREATE TABLE bot_cursors (
    conversation_id TEXT PRIMARY KEY REFERENCES conversations (id),
    seq             BIGINT NOT NULL
);

CREATE TABLE turn_records (
    id              TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    trigger_seq     BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    detail          TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE INDEX turn_records_by_conversation ON turn_records (conversation_id, created_at);
