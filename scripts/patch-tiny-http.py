#!/usr/bin/env python3
"""Build-time patch of tiny_http 0.12.0 (see SECURITY.md, "The tiny_http patch"): two hunks.

tiny_http drains an unread request body on drop with a buffer the size of the *declared*
remainder, so `Content-Length: 100000000000000` aborts the whole process on a failed
allocation, and no public API avoids that drop. This script copies the registry's pristine
tiny_http into .patched/ (never committed) and replaces that one drain loop with a bounded
one: 64 KiB at a time, at most 1 MiB and 2 s in all; then it stops and the connection
fails to parse its next request and is closed.

The second hunk fixes burst starvation in its connection thread pool: `spawn` queued every new
connection whenever *one* thread was idle, so connections arriving together waited behind
that one thread until some keep-alive connection closed (wrk -c64 on a fresh server: 60 of 64
unanswered). Now a thread is added whenever the idle ones cannot take every queued connection.
Cargo.toml's [patch.crates-io] points at the copy.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

VERSION = "0.12.0"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
dest = os.path.join(root, ".patched", f"tiny_http-{VERSION}")
stamp = os.path.join(dest, ".authd-patched-v2")
if os.path.exists(stamp):
    sys.exit(0)

cargo_home = os.environ.get("CARGO_HOME", os.path.expanduser("~/.cargo"))


def pristine():
    found = glob.glob(os.path.join(cargo_home, "registry", "src", "*", f"tiny_http-{VERSION}"))
    return found[0] if found else None


src = pristine()
if src is None:
    # Fetch it through cargo from a throwaway manifest (the project's own manifest needs
    # the patched copy to exist before cargo can read it).
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "src"))
        with open(os.path.join(tmp, "Cargo.toml"), "w") as f:
            f.write(f'[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n'
                    f'[dependencies]\ntiny_http = "={VERSION}"\n')
        open(os.path.join(tmp, "src", "lib.rs"), "w").close()
        subprocess.run(["cargo", "fetch", "--manifest-path", os.path.join(tmp, "Cargo.toml")],
                       check=True)
    src = pristine()
if src is None:
    sys.exit(f"patch-tiny-http: tiny_http {VERSION} not found under {cargo_home}")

OLD = """        let mut remaining_to_read = self.size;

        while remaining_to_read > 0 {
            let mut buf = vec![0; remaining_to_read];
"""
NEW = """        // authd patch: bounded drain (64 KiB buffer, 1 MiB and 2 s in all).
        let mut remaining_to_read = self.size;
        let mut budget: usize = 1 << 20;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);

        while remaining_to_read > 0 && budget > 0 && std::time::Instant::now() < deadline {
            let want = remaining_to_read.min(budget).min(64 * 1024);
            budget -= want;
            let mut buf = vec![0; want];
"""

shutil.rmtree(dest, ignore_errors=True)
shutil.copytree(src, dest)
path = os.path.join(dest, "src", "util", "equal_reader.rs")
text = open(path).read()
if text.count(OLD) != 1:
    sys.exit("patch-tiny-http: equal_reader.rs does not hold the expected drain loop; not patched")
open(path, "w").write(text.replace(OLD, NEW))
POOL_OLD = """        if self.sharing.waiting_tasks.load(Ordering::Acquire) == 0 {"""
POOL_NEW = """        // authd patch: one thread per queued connection, not one idle thread for a burst.
        if self.sharing.waiting_tasks.load(Ordering::Acquire) <= queue.len() {"""
pool = os.path.join(dest, "src", "util", "task_pool.rs")
pool_text = open(pool).read()
if pool_text.count(POOL_OLD) != 1:
    sys.exit("patch-tiny-http: task_pool.rs does not hold the expected spawn test; not patched")
open(pool, "w").write(pool_text.replace(POOL_OLD, POOL_NEW))
# Built as a path dependency, its (harmless) warnings would show in every build of authd.
lib = os.path.join(dest, "src", "lib.rs")
lib_text = open(lib).read()
open(lib, "w").write("#![allow(warnings)]\n" + lib_text)
# The copy is no longer the registry's: drop the checksum file cargo would compare.
for f in (".cargo-ok", ".cargo_vcs_info.json"):
    try:
        os.remove(os.path.join(dest, f))
    except FileNotFoundError:
        pass
open(stamp, "w").write("patched by scripts/patch-tiny-http.py\n")
print(f"patch-tiny-http: patched copy in {os.path.relpath(dest, root)}")
