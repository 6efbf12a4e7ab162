-- Tandem's PostgreSQL schema, version 1. Applied by the server at start, inside one
-- transaction under an advisory lock, in the schema named by --postgres-schema.

-- Who owns each room: the epoch grows on every claim; writes carry the epoch they were
-- made under and are refused (in the same transaction) when it is no longer current.
CREATE TABLE room_owner (
    room        text PRIMARY KEY,
    epoch       bigint NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now()
);

-- A document's last snapshot: the whole state as one v1 update, covering the log up to `upto`.
CREATE TABLE doc_snapshot (
    room   text PRIMARY KEY,
    upto   bigint NOT NULL,
    state  bytea NOT NULL
);

-- A document's log after its snapshot: one row per group commit, holding the updates
-- numbered up to `seq`, each as a 4-byte big-endian length and the update.
CREATE TABLE doc_log (
    room     text NOT NULL,
    seq      bigint NOT NULL,
    updates  bytea NOT NULL,
    PRIMARY KEY (room, seq)
);

-- A chat stream: its epoch (its identity for resuming clients) and how far it was trimmed.
CREATE TABLE stream_meta (
    room          text PRIMARY KEY,
    stream_epoch  text NOT NULL,
    trimmed       bigint NOT NULL
);

-- A chat stream's messages, by seq (each the JSON record the server built).
CREATE TABLE stream_message (
    room    text NOT NULL,
    seq     bigint NOT NULL,
    record  bytea NOT NULL,
    PRIMARY KEY (room, seq)
);
