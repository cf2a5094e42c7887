-- Chat (overlay/chat). Display names are server-wide: name_key is the name
-- in lower case, unique, so two viewers never look alike by case.
CREATE TABLE chat_names (
	viewer_id  TEXT PRIMARY KEY,
	name       TEXT NOT NULL,
	name_key   TEXT NOT NULL UNIQUE,
	changed_at BIGINT NOT NULL
);

-- Every message with its stream, viewer, time and the stream's media clock
-- when it came (media_at, NULL before media), so that a replay can show it in
-- sync. status: visible, held, deleted, rejected.
CREATE TABLE chat_messages (
	id         TEXT PRIMARY KEY,
	stream     TEXT NOT NULL,
	viewer_id  TEXT NOT NULL DEFAULT '',
	name       TEXT NOT NULL,
	role       TEXT NOT NULL DEFAULT '',
	body       TEXT NOT NULL,
	question   INTEGER NOT NULL DEFAULT 0,
	sku        TEXT NOT NULL DEFAULT '',
	answered   INTEGER NOT NULL DEFAULT 0,
	media_at   BIGINT,
	created_at BIGINT NOT NULL,
	status     TEXT NOT NULL
);
CREATE INDEX chat_messages_stream ON chat_messages (stream, created_at);
CREATE INDEX chat_messages_created ON chat_messages (created_at);

-- A room's moderation state (JSON of chat.RoomState): settings, pinned
-- message, moderator key hash, mutes and bans.
CREATE TABLE chat_rooms (
	stream     TEXT PRIMARY KEY,
	state      TEXT NOT NULL,
	updated_at BIGINT NOT NULL
);

-- The moderation log: who did what, when.
CREATE TABLE chat_actions (
	id      TEXT PRIMARY KEY,
	stream  TEXT NOT NULL,
	at      BIGINT NOT NULL,
	by_role TEXT NOT NULL,
	action  TEXT NOT NULL,
	target  TEXT NOT NULL DEFAULT '',
	detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX chat_actions_stream ON chat_actions (stream, at);
CREATE INDEX chat_actions_at ON chat_actions (at);
