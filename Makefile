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

.PHONY: venv lint format test quickstart bench clean interop-tools

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

# The interop tests produce with kcat (librdkafka), an independent Kafka client, and the offline docs
# test renders /docs in headless Chromium. Install them where we can (root with apt-get, as in CI);
# anywhere else say loudly that those tests cannot run.
interop-tools:
	@if command -v kcat >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing kcat (librdkafka's command-line client) for the interop tests"; \
		apt-get install -y -qq kcat >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq kcat >/dev/null; }; \
	else \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
		echo "!! kcat is not installed and this user cannot install it (not root, or no apt-get):      !!"; \
		echo "!! the kcat interop tests CANNOT RUN and will be skipped. Install kcat (librdkafka) first. !!"; \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	fi
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (Debian's) for the offline docs test: /docs rendered with no network"; \
		apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; }; \
	else \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
		echo "!! chromium is not installed and this user cannot install it (not root, or no apt-get):  !!"; \
		echo "!! the offline docs test CANNOT RUN and will be skipped. Install chromium (Debian) first.  !!"; \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	fi

test: lint interop-tools
	$(BIN)/python -m pytest tests --durations=15

quickstart: venv
	$(BIN)/raymm quickstart --config configs/quickstart.yaml

bench: venv
	$(BIN)/python bench/quickstart.py
	$(BIN)/python bench/extract_throughput.py
	$(BIN)/python bench/train_scaling.py
	$(BIN)/python bench/quality_synth.py
	$(BIN)/python bench/retrieval.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
