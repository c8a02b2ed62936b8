#!/usr/bin/env bash
# `make tiny-http-test`: tiny_http's own test suite (it ships in the crate, tests/) against
# the copy that patches/tiny_http/build.rs patched. The tests a patch changes on purpose are
# named in that patch's header ("Changes tiny_http's own test `…`") and skipped here.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p authd-tiny-http
tree=$(ls -dt target/debug/build/authd-tiny-http-*/out/tiny_http-0.12.0 2>/dev/null | head -1)
[ -n "$tree" ] || { echo "tiny-http-test: no patched tree under target/debug/build" >&2; exit 1; }
work=target/tiny_http-tests
rm -rf "$work/src-tree" && mkdir -p "$work" && cp -r "$tree" "$work/src-tree"
skips=()
for t in $(grep -ho "Changes tiny_http's own test \`[^\`]*\`" patches/tiny_http/*.patch | sed "s/.*\`\(.*\)\`/\1/"); do
  skips+=(--skip "${t#*::}")
done
cd "$work/src-tree"
# The crate's dev-dependency rustc-serialize 0.3.24 no longer builds with a current
# compiler; 0.3.25 is the same code with that fixed.
cargo update --quiet -p rustc-serialize --precise 0.3.25
echo "tiny-http-test: skipping ${skips[*]:-nothing}"
CARGO_TARGET_DIR=../target cargo test --quiet -- "${skips[@]}"
