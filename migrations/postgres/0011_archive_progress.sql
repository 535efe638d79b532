-- Messages are appended to their conversation's chain behind the commit that accepts
-- them, in batches (archive::backlog): how far each conversation's messages are
-- archived. Everything written before this table existed was archived with its commit.

CREATE TABLE archive_progress (
    conversation_id TEXT PRIMARY KEY,
    archived_seq    BIGINT NOT NULL
);

INSERT INTO archive_progress (conversation_id, archived_seq)
SELECT id, last_seq FROM conversations WHERE last_seq > 0;
