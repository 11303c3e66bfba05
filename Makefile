# raymm: the two set-up commands are `make quickstart` and `make test`; both create .venv and
# install on a fresh machine, and are no-ops for set-up when .venv is current.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The image's pip mirrors print one warning per package; hide those lines, keep real errors.
PIP_QUIET := grep -v '^WARNING: Location .* is ignored' || true

.PHONY: venv lint format test quickstart bench docs clean interop-tools

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing raymm and its dependencies into $(VENV) (first time: a few minutes)"
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | { $(PIP_QUIET); }
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 | { $(PIP_QUIET); }
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(BIN)/ruff check raymm tests bench
	$(BIN)/ruff format --check raymm tests bench
	$(BIN)/mypy raymm

format: venv
	$(BIN)/ruff check --fix raymm tests bench
	$(BIN)/ruff format raymm tests bench

# $(call need-tool,COMMAND,DEBIAN PACKAGE,WHAT NEEDS IT): install the package where we can (root
# with apt-get, as in CI); anywhere else say loudly that what needs it cannot run.
define need-tool
	@if command -v $(1) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing $(2) (Debian's) for $(3)"; \
		apt-get install -y -qq $(2) >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq $(2) >/dev/null; }; \
	else \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
		echo "!! $(1) is not installed and this user cannot install it (not root, or no apt-get):"; \
		echo "!! $(3) CANNOT RUN and will be skipped. Install $(2) (Debian) first."; \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	fi
endef

# The interop tests produce with kcat (librdkafka), an independent Kafka client; the offline docs
# test renders /docs in headless Chromium.
interop-tools:
	$(call need-tool,kcat,kcat,the kcat interop tests)
	$(call need-tool,chromium,chromium,the offline docs test)

test: lint interop-tools
	$(BIN)/python -m pytest tests --durations=15

quickstart: venv
	$(BIN)/raymm quickstart --config configs/quickstart.yaml

# Every benchmark behind a target of design.md section 4, one line each (tests/test_bench.py checks
# that none is missing). `make bench QUICK=1` runs each one's smoke mode instead: about a minute
# each here, results in bench/results/<name>.quick.json (git-ignored), never over a committed one.
# $(call bench-args,FULL RUN'S ARGUMENTS): those arguments, or --quick with QUICK set.
bench-args = $(if $(QUICK),--quick,$(1))
bench: venv
	$(BIN)/python bench/extract_throughput.py $(call bench-args)
	$(BIN)/python bench/retrieval.py $(call bench-args)
	$(BIN)/python bench/serve_latency.py $(call bench-args,--ranker)
	$(BIN)/python bench/freshness.py $(call bench-args)
	$(BIN)/python bench/ingest.py $(call bench-args)
	$(BIN)/python bench/quality_synth.py $(call bench-args)
	$(BIN)/python bench/peers.py $(call bench-args,--dataset synthetic)

# The generated pages: docs/reference/configuration.md, docs/results/*.md and the results blocks
# in README.md and docs/*.md, from raymm/config.py's types and bench/results/*.json
# (tests/test_docs.py fails when a committed one is stale).
docs: venv
	$(BIN)/python docs/generate.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
