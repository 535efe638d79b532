-- Who takes part in a conversation besides its client, and how far each participant
-- has received and read.

CREATE TABLE conversation_members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    participant_id  TEXT NOT NULL REFERENCES participants (id),
    role            TEXT NOT NULL,
    joined_at       BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, participant_id)
);

CREATE INDEX conversation_members_by_participant ON conversation_members (participant_id);

CREATE TABLE receipts (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    participant_id  TEXT NOT NULL REFERENCES participants (id),
    delivered_seq   BIGINT NOT NULL DEFAULT 0,
    read_seq        BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, participant_id)
);
