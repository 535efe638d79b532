-- Legal holds: a conversation or all of a client's records kept past their retention
-- until the hold is lifted. Setting and lifting are archived (chain `holds`).

CREATE TABLE legal_holds (
    id          TEXT PRIMARY KEY,
    scope       TEXT NOT NULL CHECK (scope IN ('conversation', 'client')),
    subject     TEXT NOT NULL,
    reason      TEXT NOT NULL,
    set_by      TEXT NOT NULL,
    set_at      BIGINT NOT NULL,
    lifted_by   TEXT,
    lifted_at   BIGINT,
    lift_reason TEXT
);

CREATE INDEX legal_holds_by_subject ON legal_holds (scope, subject);
