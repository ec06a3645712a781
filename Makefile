# hamanet's one entry point: every target sets up what it needs on a fresh machine.
# `make help` lists the targets.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TOOLS  := $(VENV)/.tools-installed
# Build and test against the virtualenv's interpreter, whatever else is on PATH.
export VIRTUAL_ENV := $(abspath $(VENV))
export PYO3_PYTHON := $(abspath $(PY))
# `cargo test` links libpython (the crate is also an rlib); say where it lives.
PY_LIBDIR = $(shell $(PY) -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
DEMO_PORT ?= 2826

.PHONY: help setup build wheel wheel-smoke demo test test-rust test-python test-debug test-threads fuzz lint fmt bench clean
BENCH_CRATES := bench/benchsys/Cargo.toml bench/loadgen/Cargo.toml bench/servers/rust_echo/Cargo.toml
FUZZ_TARGETS := delimiter length_prefixed fixed proxy_header
FUZZ_SECONDS ?= 30

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(TOOLS): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9,<2" "pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6" "trustme>=1.1" "uvloop>=0.19" "ruff>=0.6" "mypy>=1.10"
	touch $@

setup: $(TOOLS) ## create .venv and install the build and test tools into it

build: $(TOOLS) ## build the extension (release) into .venv
	$(VENV)/bin/maturin develop --release --quiet

# A release wheel for other Linux machines, into dist/ (the one hamanet wheel there).
# WHEEL_TAG=manylinux2014 (the default) links against glibc 2.17's symbols with zig's
# linker (ziglang, installed into .venv on first use; maturin finds it as `python3 -m
# ziglang`, hence the PATH), so the wheel installs on glibc 2.17 and later (RHEL 7,
# Debian 9, Ubuntu 18.04 on) whatever glibc built it; it compiles everything apart from
# `make build` (its own target-triple directory): minutes the first time.
# WHEEL_TAG=native links with this machine's linker, and maturin tags the wheel with the
# oldest glibc its symbols allow (manylinux_2_34 on Debian 12, glibc 2.36): seconds after
# `make build`, whose compiled crate it reuses (same profile, features and interpreter).
# Either way `--auditwheel check` refuses a wheel linking a library outside the manylinux
# policy rather than bundling it. One wheel per CPython version, not abi3: 3.11's stable
# ABI has no vectorcall, so every handler call would build an argument tuple (5% more
# instructions per 64-byte echo round trip, by callgrind); 3.12's has it (0.7% more), so
# an abi3-py312 wheel could serve 3.12 and later beside cp39..cp311 ones. WHEEL_PYTHONS
# lists the interpreters to build for (the virtualenv's by default; a compile each).
WHEEL_TAG ?= manylinux2014
WHEEL_PYTHONS ?= $(abspath $(PY))
ZIGLANG := ziglang==0.17.1
WHEEL_FLAGS_manylinux2014 := --zig --compatibility manylinux2014
WHEEL_FLAGS_native :=

wheel: $(TOOLS) ## a release wheel into dist/ (WHEEL_TAG=manylinux2014 by zig, or native)
	@test -n "$(filter $(WHEEL_TAG),manylinux2014 native)" \
	  || { echo "WHEEL_TAG is manylinux2014 or native, not $(WHEEL_TAG)"; exit 1; }
	@if [ "$(WHEEL_TAG)" = manylinux2014 ] && ! $(PY) -m ziglang version >/dev/null 2>&1; then \
	  $(PY) -m pip install --quiet "$(ZIGLANG)"; fi
	rm -f dist/hamanet-*.whl
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release --auditwheel check \
	  $(WHEEL_FLAGS_$(WHEEL_TAG)) $(addprefix -i ,$(WHEEL_PYTHONS)) --out dist

wheel-smoke: $(TOOLS) ## install dist/'s wheel in a fresh virtualenv elsewhere, run the examples from it
	PYTHON=$(abspath $(PY)) .ci/wheel_smoke.sh

demo: build ## run the LyricsPoet server and the LyricsReader client against each other
	@$(PY) examples/lyrics_poet.py $(DEMO_PORT) & poet=$$!; \
	  trap 'kill $$poet 2>/dev/null' EXIT; \
	  $(PY) examples/wait_port.py 127.0.0.1 $(DEMO_PORT) && \
	  $(PY) examples/lyrics_reader.py 4 $(DEMO_PORT)

test: build test-rust test-python ## build, then cargo test and pytest

test-rust: $(TOOLS) ## the Rust core's tests
	LD_LIBRARY_PATH=$(PY_LIBDIR) cargo test --quiet

test-python: build ## the Python surface's tests
	$(PY) -m pytest

# tests/test_serve.py is left out: its supervisors and children are programs, which
# `make test` runs once already, and it is the slowest file for what it would add.
test-debug: build ## pytest again under CPython's debug allocator (memory errors, other timings)
	PYTHONMALLOC=debug $(PY) -m pytest -p no:cacheprovider --ignore=tests/test_serve.py

# Files the reactor and pool settings cannot reach, left out of test-threads: hamanet.aio
# runs one reactor and no pool whatever is asked, and the TLS examples run as programs,
# which the suite's settings do not reach (conftest applies them in-process).
THREADS_SKIP := --ignore=tests/test_aio.py --ignore=tests/test_aio_streams.py \
	--ignore=tests/test_tls_examples.py --ignore=tests/test_serve.py

test-threads: build ## pytest again with 2 reactors, with a worker pool, and with both
	HAMANET_TEST_REACTORS=2 $(PY) -m pytest -q -p no:cacheprovider $(THREADS_SKIP)
	HAMANET_TEST_WORKERS=2 $(PY) -m pytest -q -p no:cacheprovider $(THREADS_SKIP)
	HAMANET_TEST_REACTORS=2 HAMANET_TEST_WORKERS=2 $(PY) -m pytest -q -p no:cacheprovider $(THREADS_SKIP)

# cargo fuzz passes nightly-only flags; RUSTC_BOOTSTRAP lets the stable toolchain accept
# them, so no nightly toolchain is needed. The framers and the PROXY header parser are
# safe Rust, whose failures are panics, so no sanitizer runtime is needed either
# (--sanitizer none). A failure leaves
# the input that found it in fuzz/artifacts/ and the fuzzer's output in fuzz/logs/.
fuzz: ## fuzz each framer and the PROXY header parser for FUZZ_SECONDS (installs cargo-fuzz if missing)
	command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz --version 0.13.2
	mkdir -p fuzz/logs
	cd fuzz && for target in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $$target -- -max_total_time=$(FUZZ_SECONDS) \
	    > logs/$$target.log 2>&1 || { tail -n 40 logs/$$target.log; exit 1; }; \
	  echo "fuzz $$target: $$(grep -E '^Done' logs/$$target.log)"; \
	done

bench: build ## hamanet vs uvloop, asyncio, rloop and a plain Rust echo (see bench/README.md)
	bench/run.sh $(BENCH_ARGS)

lint: build ## rustfmt, clippy, ruff, and mypy's stubtest of the .pyi against the built module
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	cargo clippy --all-targets --quiet --no-default-features -- -D warnings
	cargo fmt --check --manifest-path fuzz/Cargo.toml
	# One target directory with the core's: rustls and aws-lc (a C build) compile once
	# for all of them.
	for crate in $(BENCH_CRATES); do \
	  cargo fmt --check --manifest-path $$crate && \
	  cargo clippy --quiet --manifest-path $$crate --target-dir target -- -D warnings || exit 1; \
	done
	$(VENV)/bin/ruff check python tests examples bench
	$(VENV)/bin/ruff format --check python tests examples bench
	$(PY) -m mypy.stubtest hamanet._hamanet --allowlist python/stubtest-allowlist.txt

fmt: $(TOOLS) ## apply rustfmt and ruff format
	cargo fmt
	$(VENV)/bin/ruff format python tests examples bench
	$(VENV)/bin/ruff check --fix python tests examples bench

clean: ## remove build output and the virtualenv
	cargo clean
	rm -rf $(VENV) .pytest_cache .ruff_cache
