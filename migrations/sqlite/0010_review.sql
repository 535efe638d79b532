-- Compliance review: the full-text index of transcripts, facts of bot turns to search
-- by (guardrail rules hit, products, risk levels), review annotations and guardrail
-- decision labels. Annotations are appended, never changed, and archived in their
-- conversation's chain.

-- Message text as terms (lower-cased words; overlapping pairs of CJK characters), so
-- a two-character word such as 保本 is found inside a sentence.
CREATE VIRTUAL TABLE search_text USING fts5 (
    terms,
    conversation_id UNINDEXED,
    seq UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 0'
);

-- How far each conversation's messages are indexed.
CREATE TABLE search_progress (
    conversation_id TEXT PRIMARY KEY,
    indexed_seq     BIGINT NOT NULL
);

CREATE TABLE turn_facts (
    conversation_id TEXT NOT NULL,
    turn_id         TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('rule', 'product', 'level')),
    value           TEXT NOT NULL,
    at              BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, turn_id, kind, value)
);

CREATE INDEX turn_facts_by_value ON turn_facts (kind, value, at);

CREATE TABLE reviews (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    actor_id        TEXT NOT NULL,
    at              BIGINT NOT NULL,
    reviewed        BIGINT NOT NULL,
    note            TEXT NOT NULL
);

CREATE INDEX reviews_by_conversation ON reviews (conversation_id, id);

CREATE TABLE guardrail_labels (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    turn_id         TEXT NOT NULL,
    rule_id         TEXT NOT NULL,
    label           TEXT NOT NULL CHECK (label IN ('correct', 'false_positive', 'missed')),
    direction       TEXT NOT NULL CHECK (direction IN ('input', 'output')),
    language        TEXT NOT NULL,
    text            TEXT NOT NULL,
    context         TEXT NOT NULL,
    note            TEXT NOT NULL,
    actor_id        TEXT NOT NULL,
    at              BIGINT NOT NULL
);

CREATE INDEX guardrail_labels_by_conversation ON guardrail_labels (conversation_id, id);
