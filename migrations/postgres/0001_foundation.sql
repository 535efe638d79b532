-- Participants, conversations, messages and the append-only audit log.
-- Timestamps are Unix milliseconds; JSON bodies are text (same SQL as SQLite).

CREATE TABLE participants (
    id           TEXT PRIMARY KEY,
    role         TEXT NOT NULL CHECK (role IN ('client', 'advisor', 'compliance', 'admin', 'bot', 'system')),
    display_name TEXT NOT NULL,
    language     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

INSERT INTO participants (id, role, display_name, language, created_at, updated_at)
VALUES ('wealthdesk-bot', 'bot', 'wealthdesk', 'zh-CN', 0, 0),
       ('wealthdesk-system', 'system', 'wealthdesk', 'zh-CN', 0, 0);

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES participants (id),
    mode       TEXT NOT NULL DEFAULT 'bot' CHECK (mode IN ('bot', 'queued', 'human', 'closed')),
    language   TEXT NOT NULL,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX conversations_by_client ON conversations (client_id, created_at);

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq             BIGINT NOT NULL,
    sender_id       TEXT NOT NULL REFERENCES participants (id),
    sender_role     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    body            TEXT NOT NULL,
    client_msg_id   TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, sender_id, client_msg_id)
);

CREATE TABLE audit_log (
    id         BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor_id   TEXT NOT NULL,
    actor_role TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT,
    detail     TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_by_subject ON audit_log (subject, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
