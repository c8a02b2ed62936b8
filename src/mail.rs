//! The outbox's sender and the messages it sends. Handlers only queue a mail (a row of
//! `authd_outbox`, in the statement that makes its token); one background thread per
//! instance drains the outbox and delivers by SMTP (lettre's blocking transport), or, with
//! no `SMTP_URL`, writes each message to the log as Django's console e-mail backend does.
//! A mail server that is down or slow therefore never fails or slows an HTTP answer.

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message, SmtpTransport, Transport};

use crate::config::Recovery;
use crate::db::recovery::{Attempt, Queued};
use crate::recovery::Purpose;
use crate::{Ctx, Shutdown, db};

/// How often the sender looks for due mail when no new mail wakes it (a retry is due 5 s
/// after a failed attempt; new mail wakes it at once, by `NOTIFY`).
const POLL: Duration = Duration::from_secs(1);
/// Longest wait for the mail server: to connect, and for each reply. Below the 10 s
/// within which a failed mail is tried again, so a server that hangs still gets that pace.
const SMTP_TIMEOUT: Duration = Duration::from_secs(8);
/// Mails delivered in one round at most before the sender checks for shutdown again.
const BATCH: usize = 100;
/// How often tokens past their expiry (and their mails) are dropped.
const EXPIRY_SWEEP: Duration = Duration::from_secs(5);

/// The templates, one pair per message: the plain text (its first line is `Subject: …`)
/// and the HTML part.
const RESET_TXT: &str = include_str!("../templates/password_reset.txt");
const RESET_HTML: &str = include_str!("../templates/password_reset.html");
const VERIFY_TXT: &str = include_str!("../templates/verify_email.txt");
const VERIFY_HTML: &str = include_str!("../templates/verify_email.html");

/// The endpoint a token is posted to (as `token`), the mail's link when no link template
/// is set.
fn endpoint(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Reset => "POST /api/password/reset/confirm/",
        Purpose::Verify => "POST /api/email/verify/",
    }
}

/// The SMTP transport for `url`: `smtp://` upgrades with STARTTLS when the server offers
/// it (add `?tls=required` to insist), `smtps://` is TLS from the first byte; credentials
/// come from the URL's user and password. Connects to nothing yet.
pub fn smtp_transport(url: &str) -> Result<SmtpTransport, String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    let tls_given = url
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with("tls=")));
    let url: Cow<str> = match scheme {
        Some("smtps") => url.into(),
        Some("smtp") if tls_given => url.into(),
        Some("smtp") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}tls=opportunistic").into()
        }
        _ => return Err("expected smtp://host:port or smtps://host:port".into()),
    };
    Ok(SmtpTransport::from_url(&url)
        .map_err(|e| format!("not a usable SMTP URL: {e}"))?
        .timeout(Some(SMTP_TIMEOUT))
        .build())
}

/// A message ready to send: subject, plain text, HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The `Subject` (encoded by lettre when the message is built).
    pub subject: String,
    /// The plain-text part.
    pub text: String,
    /// The HTML part.
    pub html: String,
}

/// Fills the `{name}` placeholders of `template` in one pass (a value that holds a
/// placeholder is not filled again); `escape` is applied to every value.
fn fill(template: &str, values: &[(&str, &str)], escape: fn(&str) -> Cow<'_, str>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after
            .find('}')
            .and_then(|close| values.iter().find(|(k, _)| *k == &after[..close]))
            .map(|(k, v)| (k.len(), *v));
        match value {
            Some((len, v)) => {
                out.push_str(&escape(v));
                rest = &after[len + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `s` unchanged (the plain-text part).
fn as_is(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

/// `s` with the characters HTML gives a meaning escaped.
pub fn html_escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out.into()
}

/// A lifetime as a person reads it: "1 hour", "90 minutes", "45 seconds".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs().max(1);
    let (n, unit) = if s % 3600 == 0 {
        (s / 3600, "hour")
    } else if s % 60 == 0 {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// The product name the mails give: `EMAIL_FROM`'s display name, or "authd".
pub fn product(settings: &Recovery) -> &str {
    settings
        .email_from
        .name
        .as_deref()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or("authd")
}

/// The message for a queued mail, from its templates.
pub fn render(settings: &Recovery, purpose: Purpose, token: &str, lifetime: Duration) -> Rendered {
    let (txt, html, url) = match purpose {
        Purpose::Reset => (RESET_TXT, RESET_HTML, &settings.reset_url),
        Purpose::Verify => (VERIFY_TXT, VERIFY_HTML, &settings.verify_url),
    };
    let link = match url {
        Some(u) => u.replace("{token}", token),
        None => endpoint(purpose).to_string(),
    };
    let expiry = human_duration(lifetime);
    let values = [
        ("product", product(settings)),
        ("link", link.as_str()),
        ("token", token),
        ("expiry", expiry.as_str()),
    ];
    let text = fill(txt, &values, as_is);
    let (subject, body) = text
        .strip_prefix("Subject: ")
        .and_then(|t| t.split_once('\n'))
        .unwrap_or(("", &text));
    Rendered {
        subject: subject.trim().to_string(),
        text: body.trim_start_matches('\n').to_string(),
        html: fill(html, &values, html_escape),
    }
}

/// Where mail goes.
enum Backend {
    /// Into the log (no `SMTP_URL`).
    Console,
    /// To the SMTP server.
    Smtp(Box<SmtpTransport>),
}

/// Builds and delivers the messages of queued mails.
pub struct Mailer {
    backend: Backend,
    settings: Recovery,
}

impl Mailer {
    /// The mailer the settings describe.
    pub fn new(settings: &Recovery) -> Result<Mailer, String> {
        let backend = match &settings.smtp_url {
            Some(url) => Backend::Smtp(Box::new(smtp_transport(url)?)),
            None => Backend::Console,
        };
        Ok(Mailer {
            backend,
            settings: settings.clone(),
        })
    }

    /// The message for `q`: `From` and the envelope sender `EMAIL_FROM`, `To` the address
    /// on record with the user's name, `Date`, `Message-ID`; every header encoded by lettre.
    pub fn message(&self, q: &Queued) -> Result<(Message, Rendered), String> {
        let address: Address = q
            .recipient
            .parse()
            .map_err(|e| format!("the address on record cannot be written: {e}"))?;
        // authd refuses control characters in names, but a user made elsewhere (Django's
        // admin) may have them; lettre would panic on one. Spaces instead.
        let name: String = q
            .recipient_name
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let name = Some(name.trim().to_string()).filter(|n| !n.is_empty());
        let rendered = render(&self.settings, q.purpose, &q.token, q.lifetime);
        let from = self.settings.email_from.clone();
        let envelope =
            lettre::address::Envelope::new(Some(from.email.clone()), vec![address.clone()])
                .map_err(|e| e.to_string())?;
        let message = Message::builder()
            .from(from)
            .to(Mailbox::new(name, address))
            .subject(rendered.subject.clone())
            .message_id(Some(q.message_id.clone()))
            .date_now()
            .envelope(envelope)
            .multipart(MultiPart::alternative_plain_html(
                rendered.text.clone(),
                rendered.html.clone(),
            ))
            .map_err(|e| e.to_string())?;
        Ok((message, rendered))
    }

    /// One attempt to deliver `q`.
    pub fn deliver(&self, q: &Queued) -> Attempt {
        // A message lettre cannot build (or panics on) will never be sent: dropped, rather
        // than tried again for ever.
        let (message, rendered) = match catch_unwind(AssertUnwindSafe(|| self.message(q))) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return Attempt::Rejected(e),
            Err(_) => return Attempt::Rejected("the mail library panicked".into()),
        };
        match &self.backend {
            Backend::Console => {
                log::info!(
                    target: "authd::mail",
                    "SMTP_URL is not set, so this mail is written here instead of sent:\n{}\n{}",
                    message.headers(),
                    rendered.text
                );
                Attempt::Delivered
            }
            Backend::Smtp(smtp) => match smtp.send(&message) {
                Ok(_) => Attempt::Delivered,
                Err(e) if e.is_permanent() => Attempt::Rejected(e.to_string()),
                Err(e) => Attempt::Failed {
                    server_down: !e.is_transient(),
                    error: e.to_string(),
                },
            },
        }
    }
}

/// The `Message-ID` for a mail whose token has the random `key`: unique, in the sender's
/// domain, the same on every retry.
pub fn message_id(settings: &Recovery, key: &str) -> String {
    format!("<{key}.authd@{}>", settings.email_from.email.domain())
}

/// Starts the sender thread: it waits for the schema, then drains the outbox until shutdown.
pub fn spawn_sender(ctx: &Arc<Ctx>, stop: &Shutdown) {
    let (ctx, stop) = (ctx.clone(), stop.clone());
    let started = thread::Builder::new()
        .name("mail-sender".into())
        .spawn(move || run(&ctx, &stop));
    if let Err(e) = started {
        log::error!("cannot start the mail sender: {e}");
    }
}

/// The sender's loop: a connection of its own (not one of the request pool's), rounds of
/// deliveries, and between rounds a wait of up to [`POLL`] for new mail.
fn run(ctx: &Ctx, stop: &Shutdown) {
    let mailer = match Mailer::new(&ctx.config.recovery) {
        Ok(m) => m,
        Err(e) => {
            log::error!("the mail sender cannot start, mail stays queued: SMTP_URL: {e}");
            return;
        }
    };
    let mut conn: Option<db::Conn> = None;
    let mut swept: Option<Instant> = None;
    while !stop.requested() {
        if !ctx.is_migrated() {
            stop.sleep(POLL);
            continue;
        }
        let round = catch_unwind(AssertUnwindSafe(|| {
            let more = round(ctx, stop, &mailer, &mut conn, &mut swept)?;
            match conn.as_mut() {
                Some(c) if !more => c.wait_for_mail(POLL).map(|_| ()),
                _ => Ok(()),
            }
        }));
        let failed = match round {
            Ok(Ok(())) => false,
            Ok(Err(e)) => {
                log::warn!(target: "authd::mail", "mail sender: {e:?}; trying again");
                true
            }
            Err(_) => true,
        };
        if failed {
            conn = None;
            stop.sleep(POLL);
        }
    }
}

/// Delivers what is due, up to [`BATCH`] mails, and now and then drops expired tokens;
/// whether more may be due at once (the batch was full).
fn round(
    ctx: &Ctx,
    stop: &Shutdown,
    mailer: &Mailer,
    conn: &mut Option<db::Conn>,
    swept: &mut Option<Instant>,
) -> Result<bool, db::DbError> {
    let conn = match conn {
        Some(c) => c,
        None => conn.insert(db::recovery::connect(&ctx.config.database)?),
    };
    if swept.is_none_or(|t| t.elapsed() >= EXPIRY_SWEEP) {
        let n = conn.drop_expired_tokens()?;
        if n > 0 {
            log::debug!(target: "authd::mail", "dropped {n} expired recovery tokens");
        }
        *swept = Some(Instant::now());
    }
    for _ in 0..BATCH {
        if stop.requested() {
            return Ok(false);
        }
        let mut attempt_of = None;
        let outcome = conn.deliver_next(|q| {
            attempt_of = Some((q.id, q.purpose, q.attempts));
            mailer.deliver(q)
        })?;
        let (Some(outcome), Some((id, purpose, attempts))) = (outcome, attempt_of) else {
            return Ok(false);
        };
        let kind = match purpose {
            Purpose::Reset => "password reset",
            Purpose::Verify => "verification",
        };
        match outcome {
            Attempt::Delivered => {
                log::info!(target: "authd::mail", "{kind} mail {id} delivered");
            }
            Attempt::Rejected(why) => {
                log::warn!(target: "authd::mail", "{kind} mail {id} dropped: {why}");
            }
            Attempt::Failed { error, server_down } => {
                log::warn!(
                    target: "authd::mail",
                    "{kind} mail {id} not delivered (attempt {}), will retry: {error}",
                    attempts + 1
                );
                if server_down {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(reset_url: Option<&str>) -> Recovery {
        Recovery {
            token_ttl: Duration::from_secs(3600),
            max_per_email: 3,
            max_per_ip: 20,
            smtp_url: None,
            email_from: "Acme <no-reply@acme.example>".parse().unwrap(),
            reset_url: reset_url.map(str::to_string),
            verify_url: None,
            require_verification: false,
        }
    }

    #[test]
    fn placeholders_are_filled_once_and_escaped_in_html() {
        let v = [("a", "{b}"), ("b", "<x & 'y'>")];
        assert_eq!(fill("{a}-{b}-{c}-{", &v, as_is), "{b}-<x & 'y'>-{c}-{");
        assert_eq!(
            fill("<p>{b}</p>", &v, html_escape),
            "<p>&lt;x &amp; &#39;y&#39;&gt;</p>"
        );
    }

    #[test]
    fn a_reset_mail_has_the_link_the_product_and_the_expiry() {
        let r = render(
            &settings(Some("https://app.example/reset?t={token}&x=1")),
            Purpose::Reset,
            "TOKEN",
            Duration::from_secs(3600),
        );
        assert_eq!(r.subject, "Reset your Acme password");
        assert!(r.text.contains("https://app.example/reset?t=TOKEN&x=1"));
        assert!(r.text.contains("within 1 hour"));
        assert!(!r.text.contains('{'), "{}", r.text);
        assert!(
            r.html
                .contains("href=\"https://app.example/reset?t=TOKEN&amp;x=1\"")
        );
    }

    #[test]
    fn without_a_link_template_the_mail_names_the_endpoint() {
        let r = render(
            &settings(None),
            Purpose::Verify,
            "TOKEN",
            Duration::from_secs(90),
        );
        assert!(r.text.contains("POST /api/email/verify/"));
        assert!(r.text.contains("TOKEN"));
        assert!(r.text.contains("90 seconds"));
        assert!(r.subject.contains("Acme"));
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(human_duration(Duration::from_secs(7200)), "2 hours");
        assert_eq!(human_duration(Duration::from_secs(5400)), "90 minutes");
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
    }

    #[test]
    fn smtp_urls_choose_their_tls() {
        assert!(smtp_transport("smtp://127.0.0.1:2525").is_ok());
        assert!(smtp_transport("smtp://u:p@mail.example:587?tls=required").is_ok());
        assert!(smtp_transport("smtps://u:p@mail.example").is_ok());
        assert!(smtp_transport("http://mail.example").is_err());
        assert!(smtp_transport("mail.example:25").is_err());
    }
}
