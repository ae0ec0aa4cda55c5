-- FastChat schema, version 1: accounts, servers, presence, undelivered messages.

CREATE TABLE users (
    name          text PRIMARY KEY,
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per server name; `incarnation` changes at every start, and the server that
-- started later (the larger incarnation) dials the mesh link.
CREATE SEQUENCE server_incarnation;

CREATE TABLE servers (
    name        text PRIMARY KEY,
    client_addr text NOT NULL,
    peer_addr   text NOT NULL,
    incarnation bigint NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    heartbeat   timestamptz NOT NULL DEFAULT now(),
    clients     integer NOT NULL DEFAULT 0,
    peers       integer NOT NULL DEFAULT 0,
    load        real NOT NULL DEFAULT 0,
    draining    boolean NOT NULL DEFAULT false
);

-- Where each online user is; the record behind the presence events on the mesh.
CREATE TABLE presence (
    user_name text PRIMARY KEY REFERENCES users (name),
    server    text NOT NULL,
    since     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX presence_server ON presence (server);

-- Messages accepted but not yet acknowledged by their recipient's client. The body is
-- opaque (base64 text of ciphertext); `seq` orders delivery.
CREATE TABLE pending (
    seq       bigserial PRIMARY KEY,
    recipient text NOT NULL REFERENCES users (name),
    sender    text NOT NULL,
    msg_id    text NOT NULL,
    body      text NOT NULL,
    sent_at   bigint NOT NULL
);
CREATE INDEX pending_recipient ON pending (recipient, seq);
