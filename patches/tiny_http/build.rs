//! Unpacks the registry's pristine tiny_http-0.12.0.crate (after checking its SHA-256
//! against Cargo.lock), applies `series` with `patch`, and writes the patched crate as one
//! file for `lib.rs` to include. The patched tree stays in OUT_DIR/tiny_http-0.12.0 so that
//! tiny_http's own tests can run against it (`make tiny-http-test`).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const NAME: &str = "tiny_http";
const VERSION: &str = "0.12.0";

fn fail(msg: String) -> ! {
    eprintln!("error: {msg}");
    panic!("{}", msg);
}

fn main() {
    let here = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let lock = here.join("../../Cargo.lock");
    println!("cargo:rerun-if-changed=series");
    println!("cargo:rerun-if-changed={}", lock.display());
    let series = fs::read_to_string(here.join("series"))
        .unwrap_or_else(|e| fail(format!("cannot read patches/tiny_http/series: {e}")));
    let patches: Vec<PathBuf> = series
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| here.join(l))
        .collect();
    for p in &patches {
        println!("cargo:rerun-if-changed={}", p.display());
    }

    let crate_file = find_crate();
    let bytes = fs::read(&crate_file)
        .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", crate_file.display())));
    let got = hex(&Sha256::digest(&bytes));
    let want = lock_checksum(&lock);
    if got != want {
        fail(format!(
            "{} has SHA-256 {got}, Cargo.lock says {want}: not the registry's pristine crate",
            crate_file.display()
        ));
    }

    // Everything the result depends on, by content: a changed patch is always re-applied.
    let mut key = Sha256::new();
    key.update(got.as_bytes());
    for p in &patches {
        let text = fs::read(p).unwrap_or_else(|e| fail(format!("cannot read {}: {e}", p.display())));
        key.update(p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
        key.update(&text);
    }
    let key = hex(&key.finalize());
    let tree = out.join(format!("{NAME}-{VERSION}"));
    let stamp = out.join("applied.sha256");
    let flat = out.join("tiny_http.rs");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) && flat.exists() {
        return;
    }

    let _ = fs::remove_dir_all(&tree);
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&crate_file)
        .arg("-C")
        .arg(&out));
    for p in &patches {
        let status = Command::new("patch")
            .args(["-p1", "--forward", "--batch", "--silent", "--no-backup-if-mismatch"])
            .arg("-d")
            .arg(&tree)
            .arg("-i")
            .arg(p)
            .status()
            .unwrap_or_else(|e| fail(format!("cannot run `patch` (install it: apt-get install patch): {e}")));
        if !status.success() {
            fail(format!("{} does not apply to pristine {NAME} {VERSION}", p.display()));
        }
    }
    let text = flatten(&tree.join("src/lib.rs"), true);
    fs::write(&flat, text).unwrap_or_else(|e| fail(format!("cannot write {}: {e}", flat.display())));
    fs::write(&stamp, &key).unwrap_or_else(|e| fail(format!("cannot write {}: {e}", stamp.display())));
}

fn run(cmd: &mut Command) {
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(format!("{cmd:?} failed: {s}")),
        Err(e) => fail(format!("cannot run {cmd:?}: {e}")),
    }
}

/// The `.crate` cargo downloaded for the `pristine` build-dependency.
fn find_crate() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| fail("neither CARGO_HOME nor HOME is set".into()));
    let cache = home.join("registry/cache");
    let file = format!("{NAME}-{VERSION}.crate");
    fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join(&file))
        .find(|p| p.exists())
        .unwrap_or_else(|| fail(format!("{file} is not in {}", cache.display())))
}

/// The checksum Cargo.lock records for the registry's tiny_http 0.12.0.
fn lock_checksum(lock: &Path) -> String {
    let text = fs::read_to_string(lock)
        .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", lock.display())));
    let wanted_name = format!("name = \"{NAME}\"");
    let wanted_version = format!("version = \"{VERSION}\"");
    text.split("[[package]]")
        .find(|p| {
            let mut lines = p.lines().map(str::trim);
            lines.clone().any(|l| l == wanted_name) && lines.any(|l| l == wanted_version)
        })
        .and_then(|p| {
            p.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix("checksum = \""))
                .map(|c| c.trim_end_matches('"').to_string())
        })
        .unwrap_or_else(|| fail(format!("Cargo.lock has no checksum for {NAME} {VERSION}")))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The crate as one file: each `mod name;` replaced by `mod name { … }` with that file's
/// text, since `include!` cannot follow module files. The root's inner attributes and
/// doc comment are dropped (`lib.rs` sets its own).
fn flatten(file: &Path, root: bool) -> String {
    let text = fs::read_to_string(file)
        .unwrap_or_else(|e| fail(format!("cannot read {}: {e}", file.display())));
    let dir = file.parent().expect("a file has a folder");
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    // Children of `foo.rs` live in `foo/`; those of `lib.rs` and `mod.rs` beside them.
    let children = if root || stem == "mod" {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    let mut flat = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if root && (trimmed.starts_with("#![") || trimmed.starts_with("//!")) {
            continue;
        }
        if let Some(name) = module_declaration(trimmed) {
            let one = children.join(format!("{name}.rs"));
            let child = if one.exists() {
                one
            } else {
                children.join(name).join("mod.rs")
            };
            let head = line.trim_end().trim_end_matches(';');
            flat.push_str(&format!("{head} {{\n{}\n}}\n", flatten(&child, false)));
        } else {
            flat.push_str(line);
            flat.push('\n');
        }
    }
    flat
}

/// `name` for a line `[pub[(…)]] mod name;`.
fn module_declaration(line: &str) -> Option<&str> {
    let rest = line.strip_suffix(';')?.trim_end();
    let rest = if let Some(r) = rest.strip_prefix("pub") {
        let r = r.trim_start();
        match r.strip_prefix('(') {
            Some(r) => r.split_once(')')?.1.trim_start(),
            None => r,
        }
    } else {
        rest
    };
    let name = rest.strip_prefix("mod ")?.trim();
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some(name)
}
