-- The tamper-evident archive: one hash chain per conversation (and per client's risk
-- profiles, and one for compliance access), each entry linking to the one before;
-- checkpoints sign a Merkle root over every chain head. Hashes are hex SHA-256.

CREATE TABLE archive_entries (
    chain_id TEXT NOT NULL,
    seq      BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    ref      TEXT NOT NULL,
    at       BIGINT NOT NULL,
    payload  TEXT NOT NULL,
    hash     TEXT NOT NULL,
    PRIMARY KEY (chain_id, seq)
) WITHOUT ROWID;

CREATE TABLE archive_heads (
    chain_id   TEXT PRIMARY KEY,
    length     BIGINT NOT NULL,
    head       TEXT NOT NULL,
    updated_at BIGINT NOT NULL
) WITHOUT ROWID;

CREATE TABLE archive_checkpoints (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         BIGINT NOT NULL,
    chains     BIGINT NOT NULL,
    records    BIGINT NOT NULL,
    root       TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);

CREATE TABLE archive_checkpoint_heads (
    checkpoint_id BIGINT NOT NULL,
    chain_id      TEXT NOT NULL,
    length        BIGINT NOT NULL,
    head          TEXT NOT NULL,
    PRIMARY KEY (checkpoint_id, chain_id)
);
