# authd: `make run` serves on 127.0.0.1:8000, `make test` runs every test.
.PHONY: run test lint conformance db-stop bench release install clean patch

PATCHED := .patched/tiny_http-0.12.0/.authd-patched-v2

# tiny_http with a bounded body drain (see SECURITY.md); generated, never committed.
$(PATCHED): scripts/patch-tiny-http.py
	@python3 scripts/patch-tiny-http.py

patch: $(PATCHED)

run: $(PATCHED)
	@scripts/run.sh

test: $(PATCHED)
	@scripts/test.sh

lint: $(PATCHED)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# schemathesis against a running authd with openapi.yaml (all checks); CI runs it.
conformance: $(PATCHED)
	@scripts/conformance.sh

# Load figures (BENCHMARKS.md): `make bench`, or `make bench BENCH_ARGS=--sweep`.
bench: $(PATCHED)
	@scripts/bench.sh $(BENCH_ARGS)

db-stop:
	@scripts/pg.sh stop .pg

# A stripped, optimised binary: target/release/authd.
release: $(PATCHED)
	cargo build --release
	@ls -l target/release/authd

# The binary and the systemd unit under $(DESTDIR)$(PREFIX) (packagers set DESTDIR).
PREFIX ?= /usr/local
install: release
	install -D -m 0755 target/release/authd $(DESTDIR)$(PREFIX)/bin/authd
	install -d $(DESTDIR)$(PREFIX)/lib/systemd/system $(DESTDIR)$(PREFIX)/share/authd
	sed 's#/usr/local/bin/authd#$(PREFIX)/bin/authd#' deploy/authd.service \
		> $(DESTDIR)$(PREFIX)/lib/systemd/system/authd.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/authd.service
	install -m 0644 deploy/authd.env.example deploy/nginx.conf $(DESTDIR)$(PREFIX)/share/authd/
	@echo "installed $(DESTDIR)$(PREFIX)/bin/authd and $(DESTDIR)$(PREFIX)/lib/systemd/system/authd.service"

clean:
	cargo clean
	rm -rf .patched
