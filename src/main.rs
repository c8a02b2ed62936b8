//! The `authd` command: parse the command line, load the config, start logging, migrate, serve.
#![forbid(unsafe_code)]

use std::process::exit;

use authd::{App, Config, cli, config::SETTINGS, db};

const USAGE: &str = "authd: a small, fast, safe user-authentication server

Usage:
  authd                 serve the API (migrates the schema first)
  authd serve           the same
  authd migrate         apply the schema to the database, then exit
  authd check           check the settings and that the database answers; one line, exit 0 or 1
  authd create-user --email EMAIL --name NAME [--superuser]
                        add a user (Django's createsuperuser); the password is read from
                        standard input, or prompted for without echo on a terminal
  authd revoke-sessions --email EMAIL
                        end every session of that account (a lost laptop)
  authd deactivate-user --email EMAIL
                        set the account inactive (login refused) and end its sessions
  authd --help          this text
  authd --version       the version

Exit status: 0 success; 1 runtime failure (database unreachable, migration, bind; for check,
any failure); 2 bad usage or setting; 3 refused input (create-user: invalid email, name or
password, or the email is taken; revoke-sessions, deactivate-user: no such account), with the
API's message.

Settings (environment, or a .env file in the working directory):";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] | ["serve"] => serve(),
        ["migrate"] => migrate(),
        ["check"] => check(),
        ["create-user", rest @ ..] => create_user(rest),
        ["revoke-sessions", rest @ ..] => account("revoke-sessions", rest),
        ["deactivate-user", rest @ ..] => account("deactivate-user", rest),
        ["-h" | "--help" | "help"] => help(),
        ["-V" | "--version" | "version"] => println!("authd {}", env!("CARGO_PKG_VERSION")),
        other => {
            eprintln!(
                "authd: unknown command {:?}; see authd --help",
                other.join(" ")
            );
            exit(2);
        }
    }
}

fn help() {
    println!("{USAGE}");
    // Columns as wide as their longest entry, two spaces apart.
    let name_width = SETTINGS.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0);
    let default_width = SETTINGS.iter().map(|(_, d, _)| d.len()).max().unwrap_or(0);
    for (name, default, meaning) in SETTINGS {
        println!("  {name:<name_width$}  {default:<default_width$}  {meaning}");
    }
}

fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

fn load_config() -> Config {
    Config::from_env().unwrap_or_else(|e| {
        eprintln!("authd: configuration error: {e}");
        exit(2);
    })
}

fn migrate() {
    init_logging();
    let config = load_config();
    match db::migrate(&config.database) {
        Ok(n) => println!("authd: schema up to date ({n} migrations applied)"),
        Err(e) => {
            eprintln!("authd: migrate failed: {e}");
            exit(1);
        }
    }
}

fn check() {
    match Config::from_env() {
        Err(e) => {
            println!("authd check: configuration error: {e}");
            exit(1);
        }
        Ok(config) => match cli::check(&config) {
            Ok(line) => println!("authd check: ok: {line}"),
            Err(line) => {
                println!("authd check: failed: {line}");
                exit(1);
            }
        },
    }
}

fn create_user(args: &[&str]) {
    let opts = cli::CreateUser::parse(args).unwrap_or_else(|e| {
        eprintln!("authd create-user: {e}; see authd --help");
        exit(2);
    });
    init_logging();
    let config = load_config();
    let password = cli::read_password().unwrap_or_else(|e| {
        eprintln!("authd create-user: cannot read the password: {e}");
        exit(2);
    });
    match cli::create_user(&config, &opts, &password) {
        Ok(user) => println!(
            "authd create-user: created user {} <{}>{}",
            user.id,
            user.email,
            if opts.superuser { " (superuser)" } else { "" }
        ),
        Err(cli::Refused::Input(errors)) => {
            for (field, message) in errors {
                eprintln!("authd create-user: {field}: {message}");
            }
            exit(3);
        }
        Err(cli::Refused::Runtime(e)) => {
            eprintln!("authd create-user: {e}");
            exit(1);
        }
    }
}

fn account(command: &str, args: &[&str]) {
    let email = cli::email_option(args).unwrap_or_else(|e| {
        eprintln!("authd {command}: {e}; see authd --help");
        exit(2);
    });
    init_logging();
    let config = load_config();
    let done = if command == "revoke-sessions" {
        cli::revoke_sessions(&config, &email)
    } else {
        cli::deactivate_user(&config, &email)
    };
    match done {
        Ok(Some((id, n))) => println!(
            "authd {command}: user {id}: {n} sessions ended{}",
            if command == "deactivate-user" {
                ", login refused"
            } else {
                ""
            }
        ),
        Ok(None) => {
            eprintln!("authd {command}: email: no account has this address");
            exit(3);
        }
        Err(e) => {
            eprintln!("authd {command}: {e}");
            exit(1);
        }
    }
}

fn serve() {
    init_logging();
    let config = load_config();
    if config.secret_key_generated {
        log::warn!(
            "SECRET_KEY is not set: using a random key for this run (DEBUG); sessions end at restart"
        );
    }
    if config.trusted_proxies.trusts_everyone() {
        log::warn!(
            "TRUSTED_PROXIES covers every address: any client that reaches authd directly can \
             choose the address it is throttled and logged as"
        );
    }
    let migrated = match db::migrate(&config.database) {
        Ok(_) => true,
        Err(db::MigrateError::Unreachable(e)) => {
            log::warn!("{e}; serving anyway, /readyz answers 503 until the database is reached");
            false
        }
        Err(db::MigrateError::Failed(e)) => {
            eprintln!("authd: migrate failed: {e}");
            exit(1);
        }
    };
    let bind = config.bind;
    let app = App::build(config, migrated).unwrap_or_else(|e| {
        eprintln!("authd: cannot listen on {bind}: {e}");
        exit(1);
    });
    let stop = app.shutdown_handle();
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    log::info!("signal {sig} received: finishing in-flight requests");
                    stop.trigger();
                }
            });
        }
        Err(e) => log::warn!("cannot install signal handlers: {e}"),
    }
    log::info!("authd listening on http://{}", app.local_addr());
    if let Err(e) = app.run() {
        eprintln!("authd: {e}");
        exit(1);
    }
}
