# Two commands on a fresh machine: `make run` (the whole pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install run test test-unit lint bench clean system-deps

install: $(VENV)/.installed

# The compiled decoder (native/, Rust) is built when cargo is there (rustup's default place
# counts too); without it the pipeline runs the Python decoder, which gives the same rows.
CARGO_PATH := $(PATH):$(HOME)/.cargo/bin:/usr/local/cargo/bin

$(VENV)/.installed: pyproject.toml native/Cargo.toml native/pyproject.toml $(wildcard native/src/*.rs)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,spark]'
	@if PATH="$(CARGO_PATH)" command -v cargo >/dev/null; then \
	  echo "building the compiled decoder (native/)"; \
	  PATH="$(CARGO_PATH)" $(BIN)/pip install -q ./native; \
	else \
	  echo "cargo not found: the compiled decoder is not built (install Rust: https://rustup.rs)"; \
	fi
	touch $@

run: install
	$(BIN)/sentinel up

# Debian packages the tests drive: Chromium (dashboard tests, through Playwright) and
# docker-compose (validates docker-compose.yml; no Docker engine needed). Installed when missing.
SYSTEM_PACKAGES := chromium:/usr/bin/chromium docker-compose:/usr/bin/docker-compose

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do [ -x "$${p#*:}" ] || missing="$$missing $${p%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# pytest exits 5 when it collects no tests; make treats that as a failure too.
test: install system-deps
	$(BIN)/sentinel kafka install
	$(BIN)/sentinel spark install
	$(BIN)/pytest -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

# The fast group: no Java, Kafka, Spark or Chromium needed (about a minute).
test-unit: install
	$(BIN)/pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src/crypto_sentinel
	@if PATH="$(CARGO_PATH)" command -v cargo >/dev/null; then \
	  cd native && PATH="$(CARGO_PATH)" PYO3_PYTHON=$(CURDIR)/$(BIN)/python sh -c \
	    'cargo fmt --check && cargo clippy -q --release -- -D warnings && cargo test -q --release'; \
	fi

bench: install
	$(BIN)/sentinel bench

clean:
	rm -rf $(VENV) .sentinel
