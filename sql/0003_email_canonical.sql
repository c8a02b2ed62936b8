-- The canonical form of each user's email (computed by authd in Rust: NFKC, invisible
-- characters removed, IDNA domain, full case folding; see src/domain.rs), unique: one
-- account per mailbox. A table of authd's, so that Django's accounts_user is unchanged.
-- Rows for users made before (or by Django since) are filled in by `authd migrate`.
CREATE TABLE IF NOT EXISTS authd_user_email (
    user_id bigint NOT NULL PRIMARY KEY REFERENCES accounts_user (id) ON DELETE CASCADE,
    canonical varchar(512) NOT NULL UNIQUE
);
