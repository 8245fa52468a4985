# prosody-mam-native: build the Prosody plugin, run a demo server, run the tests.
#
#   make plugin   -> target/prosody-plugin/mod_mam/ (mod_mam.lua + mam_native.so) and
#                    mod_muc_mam/ (room archives on the same engine) and
#                    mod_storage_mam_native/ (the engine as a storage provider)
#   make run      -> a loopback Prosody with the module and two demo accounts
#                    (PROSODY=13 for Prosody 13 instead of the system's 0.12)
#   make package  -> dist/: the Debian package, the rockspec and the binary rock
#                    (docs/packaging.md)
#   make test     -> the whole suite (Rust unit tests, Lua load test, end-to-end on
#                    Prosody 0.12 and 13, each on both archive backends: embedded
#                    SQLite and PostgreSQL, and the packages installed, upgraded and
#                    removed as an admin would, on both Prosody versions)
#
# Tests that need PostgreSQL run under scripts/with-postgres.sh, which starts a private
# loopback cluster for them and stops it afterwards (or uses the one MAM_TEST_PG names).

PLUGIN_DIR := target/prosody-plugin/mod_mam
MUC_PLUGIN_DIR := target/prosody-plugin/mod_muc_mam
STORAGE_PLUGIN_DIR := target/prosody-plugin/mod_storage_mam_native
LIB := target/release/libmam_native.so

.PHONY: all deps prosody13 plugin package package-test run test unit-test lint lua-test e2e-test e2e-test-012 e2e-test-13 fuzz soak bench clean

all: plugin

deps:
	@scripts/ensure-deps.sh

$(LIB): Cargo.toml $(shell find src -name '*.rs')
	cargo build --release

plugin: deps $(LIB)
	mkdir -p $(PLUGIN_DIR)
	install -m 0644 lua/mod_mam/*.lua $(PLUGIN_DIR)/
	# install writes a new file instead of overwriting in place: a Prosody that has
	# the old library mapped keeps running on it until it reloads the module.
	install -m 0755 $(LIB) $(PLUGIN_DIR)/mam_native.so
	# Room archives: their own shim, the same engine files and the same library (a
	# link, so both modules load one copy of it).
	mkdir -p $(MUC_PLUGIN_DIR)
	install -m 0644 lua/mod_muc_mam/*.lua lua/mod_mam/*.lib.lua $(MUC_PLUGIN_DIR)/
	ln -sf ../mod_mam/mam_native.so $(MUC_PLUGIN_DIR)/mam_native.so
	# The storage provider (storage = { muc_log = "mam_native" }): the same way.
	mkdir -p $(STORAGE_PLUGIN_DIR)
	install -m 0644 lua/mod_storage_mam_native/*.lua lua/mod_mam/*.lib.lua $(STORAGE_PLUGIN_DIR)/
	ln -sf ../mod_mam/mam_native.so $(STORAGE_PLUGIN_DIR)/mam_native.so

# dist/: the .deb, the rockspec, the binary rock and the source tarball, versioned
# from Cargo.toml (scripts/package.sh).
package: deps $(LIB)
	scripts/package.sh

# The packages installed, used, upgraded while Prosody runs, and removed, on Prosody 0.12
# and 13 (tests/e2e/test_package.py). The "newer" version to upgrade to is the same
# build packaged again with revision 2, in target/dist-next.
package-test: package prosody13
	rm -rf target/dist-next
	PACKAGE_REVISION=2 DIST=$(CURDIR)/target/dist-next scripts/package.sh >/dev/null
	MAM_TEST_DIST=$(CURDIR)/dist MAM_TEST_DIST_NEXT=$(CURDIR)/target/dist-next \
		python3 -m pytest tests/e2e/test_package.py -q
	MAM_TEST_DIST=$(CURDIR)/dist MAM_TEST_DIST_NEXT=$(CURDIR)/target/dist-next \
		MAM_TEST_PROSODY_BIN=$(CURDIR)/target/prosody13/root/usr/bin \
		python3 -m pytest tests/e2e/test_package.py -q

# Prosody 13 (Debian 13's version, from bookworm-backports) in target/prosody13,
# beside the system's 0.12 and without touching it.
prosody13:
	scripts/prosody13.sh >/dev/null

PROSODY ?= 0.12
run: plugin
	PROSODY=$(PROSODY) prosody-test-env/run.sh

# The Rust unit tests link their own Lua (the `module` build cannot link a test binary).
# MAM_TEST_PG (set by with-postgres.sh) lets the PostgreSQL store's tests run, and
# MAM_REQUIRE_PG=1 makes them fail rather than skip should it ever be missing.
unit-test: deps
	MAM_REQUIRE_PG=1 scripts/with-postgres.sh cargo test --no-default-features --features vendored

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --no-default-features --features vendored --all-targets -- -D warnings

lua-test: plugin
	lua5.4 tests/lua/load_test.lua $(PLUGIN_DIR)

# The whole end-to-end suite once per Prosody version and archive backend; one
# cluster for each PostgreSQL run.
e2e-test: e2e-test-012 e2e-test-13

e2e-test-012: plugin
	MAM_TEST_BACKEND=sqlite python3 -m pytest tests/e2e -q
	MAM_TEST_BACKEND=postgres scripts/with-postgres.sh python3 -m pytest tests/e2e -q

e2e-test-13: plugin prosody13
	MAM_TEST_PROSODY_BIN=$(CURDIR)/target/prosody13/root/usr/bin MAM_TEST_BACKEND=sqlite \
		python3 -m pytest tests/e2e -q
	MAM_TEST_PROSODY_BIN=$(CURDIR)/target/prosody13/root/usr/bin MAM_TEST_BACKEND=postgres \
		scripts/with-postgres.sh python3 -m pytest tests/e2e -q

test: deps lint unit-test lua-test e2e-test package-test

# Opt-in, not part of `make test`: needs a nightly toolchain and `cargo install cargo-fuzz`.
FUZZ_SECONDS ?= 60
fuzz:
	cd fuzz && for t in parse_xml parse_query config_value; do \
		cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=1024 || exit 1; \
	done

# Opt-in, not part of `make test`: archiving, queries and expiry against a real Prosody
# for SOAK_SECONDS (default 600), failing if RSS or open descriptors trend upward.
SOAK_SECONDS ?= 600
soak: plugin
	python3 tests/soak.py $(SOAK_SECONDS)

clean:
	cargo clean

# Side-by-side benchmark: no MAM, stock mod_mam (internal, SQLite), ours (SQLite,
# PostgreSQL); one run on Prosody 0.12, then one on 13 against 13's stock. See
# bench/README.md.
bench: plugin prosody13
	bench/run.sh --plugin-dir $(CURDIR)/target/prosody-plugin $(BENCH_ARGS)
	bench/run.sh --plugin-dir $(CURDIR)/target/prosody-plugin \
		--prosody-bin $(CURDIR)/target/prosody13/root/usr/bin $(BENCH_ARGS)
