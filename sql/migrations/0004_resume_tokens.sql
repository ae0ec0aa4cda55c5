-- Resumption tokens: a client whose server went away logs back in with one instead of
-- the password. Only a SHA-256 of each token is kept; a token is used once (resuming
-- replaces it) and expires.
CREATE TABLE resume_tokens (
    token_hash text PRIMARY KEY,
    user_name  text NOT NULL REFERENCES users (name),
    expires_at timestamptz NOT NULL
);
CREATE INDEX resume_tokens_user ON resume_tokens (user_name);
