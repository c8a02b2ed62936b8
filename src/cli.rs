//! The administrative commands: `authd create-user` (the seed's `createsuperuser`),
//! `authd revoke-sessions`, `authd deactivate-user` and `authd check`. `main.rs` turns their results into output and exit codes.

use std::io::{BufRead, IsTerminal, Write};

use crate::Config;
use crate::api::register::DUPLICATE_EMAIL;
use crate::db::{self, User};
use crate::domain::{Email, Name, Password};
use crate::password::Hasher;

/// `create-user`'s options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateUser {
    /// `--email`
    pub email: String,
    /// `--name`
    pub name: String,
    /// `--superuser`: also `is_staff` and `is_superuser`, for Django's admin.
    pub superuser: bool,
}

impl CreateUser {
    /// Reads `--email E --name N [--superuser]` (also `--email=E`), in any order.
    pub fn parse(args: &[&str]) -> Result<CreateUser, String> {
        let (mut email, mut name, mut superuser) = (None, None, false);
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (*arg, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().map(|v| v.to_string()))
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            match flag {
                "--email" => email = Some(value()?),
                "--name" => name = Some(value()?),
                "--superuser" if inline.is_none() => superuser = true,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(CreateUser {
            email: email.ok_or("--email is required")?,
            name: name.ok_or("--name is required")?,
            superuser,
        })
    }
}

/// Why `create-user` did not create the user.
#[derive(Debug)]
pub enum Refused {
    /// Invalid fields or a taken email: `(field, message)` in the API's words.
    Input(Vec<(&'static str, String)>),
    /// The database or the hasher failed.
    Runtime(String),
}

/// The password from standard input: prompted for twice, without echo, on a terminal;
/// otherwise its first line (without the line ending), as scripts pipe it.
pub fn read_password() -> std::io::Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        return Ok(line.strip_suffix('\r').unwrap_or(line).to_string());
    }
    let first = prompt_hidden("Password: ")?;
    let again = prompt_hidden("Password (again): ")?;
    if first != again {
        return Err(std::io::Error::other("the two passwords differ"));
    }
    Ok(first)
}

/// Asks on the terminal with echo off, and restores the terminal's mode after.
fn prompt_hidden(prompt: &str) -> std::io::Result<String> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let mut stderr = std::io::stderr();
    // Echo goes off before the prompt shows, so that nothing typed after it is echoed.
    let saved = tcgetattr(&stdin)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&stdin, OptionalActions::Now, &quiet)?;
    write!(stderr, "{prompt}")?;
    stderr.flush()?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    tcsetattr(&stdin, OptionalActions::Now, &saved)?;
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Validates like `POST /api/register/`, migrates, and inserts the user. Nothing is
/// written unless every field is valid and the email is free.
pub fn create_user(config: &Config, opts: &CreateUser, password: &str) -> Result<User, Refused> {
    let mut errors = Vec::new();
    let name = Name::parse(&opts.name)
        .map_err(|m| errors.push(("name", m)))
        .ok();
    let email = Email::parse(&opts.email)
        .map_err(|m| errors.push(("email", m)))
        .ok();
    let password = Password::parse(password)
        .map_err(|m| errors.push(("password", m)))
        .ok();
    let (Some(name), Some(email), Some(password)) = (name, email, password) else {
        return Err(Refused::Input(errors));
    };
    db::migrate(&config.database).map_err(|e| Refused::Runtime(e.to_string()))?;
    let hash = Hasher::new(config.bcrypt_cost)
        .hash(&password)
        .map_err(Refused::Runtime)?;
    let pool = db::pool(&config.database, 1, config.db_timeout);
    let mut conn = pool
        .get()
        .map_err(|e| Refused::Runtime(format!("cannot reach the database: {e}")))?;
    let id = conn
        .insert_user(name.as_str(), &email, &hash, opts.superuser)
        .map_err(|e| Refused::Runtime(format!("{e:?}")))?
        .ok_or_else(|| Refused::Input(vec![("email", DUPLICATE_EMAIL.to_string())]))?;
    Ok(User {
        id,
        name: name.as_str().to_string(),
        email: email.as_str().to_string(),
    })
}

/// `--email E` (or `--email=E`), the only option of `revoke-sessions` and `deactivate-user`.
pub fn email_option(args: &[&str]) -> Result<String, String> {
    match args {
        ["--email", e] => Ok(e.to_string()),
        [one] if one.starts_with("--email=") => Ok(one["--email=".len()..].to_string()),
        [] => Err("--email is required".into()),
        _ => Err(format!("unexpected arguments {args:?}")),
    }
}

/// What an account command did: the user's id and how many sessions ended; `None` when no
/// account has that address.
pub type Ended = Option<(i64, u64)>;

fn account_conn(config: &Config) -> Result<r2d2::PooledConnection<db::Manager>, String> {
    db::migrate(&config.database).map_err(|e| e.to_string())?;
    db::pool(&config.database, 1, config.db_timeout)
        .get()
        .map_err(|e| format!("cannot reach the database: {e}"))
}

/// Ends every session of the account of `email` (its access tokens die with them).
pub fn revoke_sessions(config: &Config, email: &str) -> Result<Ended, String> {
    let mut conn = account_conn(config)?;
    let Some(user) = conn.user_by_email(email).map_err(|e| format!("{e:?}"))? else {
        return Ok(None);
    };
    let n = conn
        .revoke_sessions(user.user.id, None, "operator")
        .map_err(|e| format!("{e:?}"))?;
    Ok(Some((user.user.id, n)))
}

/// Sets the account of `email` inactive (login refused) and ends every session of it.
pub fn deactivate_user(config: &Config, email: &str) -> Result<Ended, String> {
    account_conn(config)?
        .deactivate(email)
        .map_err(|e| format!("{e:?}"))
}

/// The configuration is valid (it was loaded) and the database answers: a line that says
/// where, and how far its schema is; or a line that says why not.
pub fn check(config: &Config) -> Result<String, String> {
    let target = db::describe(&config.database);
    let (applied, known) = db::schema_status(&config.database)
        .map_err(|e| format!("cannot use database {target}: {e}"))?;
    let schema = if applied >= known {
        format!("schema up to date ({applied} migrations)")
    } else {
        format!(
            "schema at {applied} of {known} migrations (authd migrate, or serve, applies the rest)"
        )
    };
    Ok(format!(
        "configuration valid, database {target} reachable, {schema}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_user_options_in_any_order_and_form() {
        let want = CreateUser {
            email: "a@example.com".into(),
            name: "Ann Lee".into(),
            superuser: true,
        };
        let a = CreateUser::parse(&[
            "--email",
            "a@example.com",
            "--name",
            "Ann Lee",
            "--superuser",
        ]);
        let b = CreateUser::parse(&["--superuser", "--name=Ann Lee", "--email=a@example.com"]);
        assert_eq!(a.unwrap(), want);
        assert_eq!(b.unwrap(), want);
        for bad in [
            &["--email", "a@example.com"][..],
            &["--name", "A"],
            &["--email"],
            &["--email", "a@b.c", "--name", "A", "--admin"],
            &["--email", "a@b.c", "--name", "A", "--superuser=yes"],
        ] {
            assert!(CreateUser::parse(bad).is_err(), "{bad:?}");
        }
    }
}
