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

release: $(PATCHED)
	cargo build --release

clean:
	cargo clean
	rm -rf .patched
