# authd: `make run` serves on 127.0.0.1:8000, `make test` runs every test.
.PHONY: run test lint db-stop bench fuzz release clean

run:
	@scripts/run.sh

test:
	@scripts/test.sh

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

db-stop:
	@scripts/pg.sh stop .pg

release:
	cargo build --release

clean:
	cargo clean
