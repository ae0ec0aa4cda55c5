-- End-to-end keys. The server stores them and never uses them: a user's public key
-- (SubjectPublicKeyInfo PEM), the private key sealed under the password (opaque), and
-- per conversation the key wrapped for each of its two users and signed by its maker.

ALTER TABLE users
    ADD COLUMN public_key text NOT NULL DEFAULT '',
    ADD COLUMN key_backup text NOT NULL DEFAULT '';

-- One current key per pair of users (user_a <= user_b). Messages name their key, so a
-- later rotation can add rows without making old messages unreadable.
CREATE TABLE conversation_keys (
    user_a     text NOT NULL REFERENCES users (name),
    user_b     text NOT NULL REFERENCES users (name),
    key_id     text NOT NULL,
    maker      text NOT NULL,
    wrapped_a  text NOT NULL,
    wrapped_b  text NOT NULL,
    signature  text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_a, user_b, key_id),
    CHECK (user_a <= user_b)
);
