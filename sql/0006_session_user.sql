-- Every authenticated request checks its session. So that the check reads one row (one
-- primary-key probe, as the bare lookup of a user does) instead of joining accounts_user,
-- a session carries its user's name, email and is_active. Triggers keep the copy exact
-- whoever writes accounts_user (authd, Django, an operator's SQL), in the same transaction.
-- The copies are text, so that no length Django's columns may have can refuse a write.

-- accounts_user first, and before the backfill reads it: no write to a user can slip in
-- between the backfill and the trigger, and the order of locks is the one every writer of
-- a user and its sessions takes (user, then sessions).
LOCK TABLE accounts_user IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE authd_session
    ADD COLUMN IF NOT EXISTS user_name text,
    ADD COLUMN IF NOT EXISTS user_email text,
    ADD COLUMN IF NOT EXISTS user_active boolean;

UPDATE authd_session s SET user_name = u.name, user_email = u.email, user_active = u.is_active
FROM accounts_user u WHERE u.id = s.user_id;

-- A session inserted without the copy (authd's login supplies it; an instance of an older
-- version during a rolling upgrade does not) takes it from its user, under a share lock so
-- that a concurrent change of the user is either seen here or waits for this insert.
CREATE OR REPLACE FUNCTION authd_session_copy_user() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.user_name IS NULL OR NEW.user_email IS NULL OR NEW.user_active IS NULL THEN
        SELECT u.name, u.email, u.is_active INTO NEW.user_name, NEW.user_email, NEW.user_active
        FROM accounts_user u WHERE u.id = NEW.user_id FOR SHARE;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS authd_session_copy_user ON authd_session;
CREATE TRIGGER authd_session_copy_user BEFORE INSERT ON authd_session
    FOR EACH ROW EXECUTE FUNCTION authd_session_copy_user();

-- A change of a user's name, email or is_active is copied to all of the user's sessions.
-- The trigger names no column (no `UPDATE OF`, no `WHEN`), so that it does not stop Django
-- from altering those columns; the function compares them itself, byte for byte (a
-- case-insensitive collation must not hide a change of case).
-- It runs with authd's rights, so that a writer with rights on accounts_user alone (Django
-- under a role of its own) can still change a user. Its search path is this schema and
-- then pg_temp, so that a temporary table of that writer's cannot stand in for
-- authd_session.
CREATE OR REPLACE FUNCTION authd_user_to_sessions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF OLD.name COLLATE "C" IS DISTINCT FROM NEW.name COLLATE "C"
       OR OLD.email COLLATE "C" IS DISTINCT FROM NEW.email COLLATE "C"
       OR OLD.is_active IS DISTINCT FROM NEW.is_active THEN
        UPDATE authd_session SET user_name = NEW.name, user_email = NEW.email,
            user_active = NEW.is_active
        WHERE user_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION authd_user_to_sessions() SET search_path = %I, pg_temp',
                   current_schema());
END $$;
REVOKE ALL ON FUNCTION authd_user_to_sessions() FROM PUBLIC;
DROP TRIGGER IF EXISTS authd_user_to_sessions ON accounts_user;
CREATE TRIGGER authd_user_to_sessions AFTER UPDATE ON accounts_user
    FOR EACH ROW EXECUTE FUNCTION authd_user_to_sessions();

ALTER TABLE authd_session
    ALTER COLUMN user_name SET NOT NULL,
    ALTER COLUMN user_email SET NOT NULL,
    ALTER COLUMN user_active SET NOT NULL;
