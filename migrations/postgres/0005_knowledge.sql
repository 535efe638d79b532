-- The knowledge base as ingested: one row per document (its current version), every
-- version ever ingested with its full text (answers cite a version; compliance can read
-- exactly what was cited), and the chunks of the current versions. The vector store is
-- derived from knowledge_chunks and can be rebuilt from it.

CREATE TABLE knowledge_documents (
    doc_id        TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('product', 'faq')),
    path          TEXT NOT NULL,
    version_hash  TEXT NOT NULL,
    title_zh      TEXT NOT NULL,
    title_en      TEXT NOT NULL,
    product_type  TEXT,
    risk_level    TEXT,
    sri           BIGINT,
    chunk_count   BIGINT NOT NULL,
    ingested_at   BIGINT NOT NULL
);

CREATE TABLE knowledge_document_versions (
    doc_id           TEXT NOT NULL,
    version_hash     TEXT NOT NULL,
    path             TEXT NOT NULL,
    source           TEXT NOT NULL,
    first_ingested   BIGINT NOT NULL,
    retired_at       BIGINT,
    PRIMARY KEY (doc_id, version_hash)
);

CREATE TABLE knowledge_chunks (
    chunk_id      TEXT PRIMARY KEY,
    doc_id        TEXT NOT NULL REFERENCES knowledge_documents (doc_id) ON DELETE CASCADE,
    version_hash  TEXT NOT NULL,
    ordinal       BIGINT NOT NULL,
    section       TEXT NOT NULL,
    language      TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    text          TEXT NOT NULL,
    indexed       TEXT NOT NULL,
    tokens        BIGINT NOT NULL
);

CREATE INDEX knowledge_chunks_by_doc ON knowledge_chunks (doc_id, ordinal);

-- Dense vectors by embedding model and chunk text (sha256 of what was embedded): a
-- restart, a new node or a re-ingest reuses them instead of running the model again.
CREATE TABLE knowledge_embeddings (
    model_id   TEXT NOT NULL,
    text_hash  TEXT NOT NULL,
    vector     BYTEA NOT NULL,
    PRIMARY KEY (model_id, text_hash)
);
