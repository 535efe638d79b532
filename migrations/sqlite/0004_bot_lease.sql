-- One node at a time runs a conversation's bot turns: a lease on the bot's cursor.
ALTER TABLE bot_cursors ADD COLUMN lease_owner TEXT;
ALTER TABLE bot_cursors ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
