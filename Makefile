# authd: `make run` serves on 127.0.0.1:8000, `make test` runs every test.
.PHONY: run test smoke lint conformance tiny-http-test browser-test db-stop bench release install clean

# tiny_http is patched by cargo itself (patches/tiny_http/build.rs): no step before cargo.
run:
	@scripts/run.sh

test:
	@scripts/test.sh

# The tutorial's four curl commands, checked, against a server that is already running
# (`make run` in another terminal); starts nothing itself. `make smoke BASE_URL=…` for another.
BASE_URL ?= http://127.0.0.1:8000
smoke:
	@scripts/seed-curl.sh $(BASE_URL)

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# tiny_http's own test suite, against the patched copy (the cases a patch changes on
# purpose are named in its header and skipped).
tiny-http-test:
	@scripts/tiny-http-test.sh

# Headless Chromium (Debian's) driven by playwright-core against a debug authd, an allowed
# page and an evil one on other ports: the cookies as the browser keeps them, CORS and the
# Origin check. Installs chromium (apt-get, as root) and playwright-core when missing.
browser-test:
	@scripts/browser-test.sh

# schemathesis against a running authd with openapi.yaml (all checks); CI runs it.
conformance:
	@scripts/conformance.sh

# Load figures (BENCHMARKS.md): `make bench`, or `make bench BENCH_ARGS=--sweep`.
bench:
	@scripts/bench.sh $(BENCH_ARGS)

db-stop:
	@scripts/pg.sh stop .pg

# A stripped, optimised binary: target/release/authd (or under CARGO_TARGET_DIR), and the
# version it is, which must be Cargo.toml's.
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -n 1)
BIN := $(or $(CARGO_TARGET_DIR),target)/release/authd
release:
	cargo build --release
	@built=$$($(BIN) --version); \
	  if [ "$$built" != "authd $(VERSION)" ]; then \
	    echo "release: built '$$built', but Cargo.toml says $(VERSION)" >&2; exit 1; fi; \
	  echo "release: $$built -> $(BIN) ($$(du -h $(BIN) | cut -f1))"

# The binary and the systemd unit under $(DESTDIR)$(PREFIX) (packagers set DESTDIR).
PREFIX ?= /usr/local
install: release
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/authd
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/share/authd
	sed 's#/usr/local/bin/authd#$(PREFIX)/bin/authd#' deploy/authd.service \
		> $(DESTDIR)$(PREFIX)/lib/systemd/system/authd.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/authd.service
	install -m 0644 deploy/authd.env.example deploy/nginx.conf $(DESTDIR)$(PREFIX)/share/authd/
	@echo "installed $(DESTDIR)$(PREFIX)/bin/authd and $(DESTDIR)$(PREFIX)/lib/systemd/system/authd.service"

clean:
	cargo clean
