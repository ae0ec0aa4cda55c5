-- Friends (seed 004): a user's list of the users whose presence it follows. One-way,
-- like an address book; direct messages do not require it.
CREATE TABLE friends (
    user_name text NOT NULL REFERENCES users (name),
    friend    text NOT NULL REFERENCES users (name),
    PRIMARY KEY (user_name, friend)
);
CREATE INDEX friends_friend ON friends (friend);
