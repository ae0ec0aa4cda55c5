-- Groups: members (one admin; the longest-standing member takes over when the admin
-- leaves), a key epoch that every membership change advances, and per epoch the group
-- key wrapped for that epoch's members (an opaque signed record made by a client).
CREATE TABLE groups (
    name       text PRIMARY KEY,
    epoch      bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE group_members (
    group_name text NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    user_name  text NOT NULL REFERENCES users (name),
    joined     bigserial,
    is_admin   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (group_name, user_name)
);
CREATE INDEX group_members_user ON group_members (user_name);

CREATE TABLE group_keys (
    group_name text NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
    epoch      bigint NOT NULL,
    record     text NOT NULL,
    PRIMARY KEY (group_name, epoch)
);

-- A stored copy of a group message names its group.
ALTER TABLE pending ADD COLUMN group_name text;
