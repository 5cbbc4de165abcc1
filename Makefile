# sdstack — the two commands are `make up` and `make test`; everything else is theirs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA_DIR := $(or $(SDSTACK_DATA_DIR),.data)
TOKENIZER := $(DATA_DIR)/clip/tokenizer/vocab.json

.PHONY: up test test-slow bench install install-dev lint format protos clean audit

up: install  ## start the object store, the three services and the gateway
	$(PY) -m sdstack.cli up

test: install-dev  ## install what tests need and run lint and the whole suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

test-slow: install-dev  ## the heavy load test and the memory soak (results go to bench/RESULTS.md)
	$(PY) -m pytest -m slow

bench: install-dev  ## every benchmark in turn (minutes; writes bench/RESULTS.md and bench/plots/)
	$(PY) -m bench

install: $(VENV)/.installed $(TOKENIZER)

install-dev: install $(VENV)/.installed-dev

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: the CPU build here, the CUDA build on GPU machines. Every later
# requirement accepts 2.13.0, so nothing replaces it.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: $(VENV)/.installed scripts/install_deploy_tools.sh scripts/requirements-deploy-tools.txt scripts/install_system_packages.sh
	$(PIP) install --quiet -e ".[dev]"
	bash scripts/install_deploy_tools.sh $(VENV)
	sh scripts/install_system_packages.sh
	@touch $@

# The real CLIP vocabulary (SPEC §10), fetched once at install time, never at run time.
$(TOKENIZER): | $(VENV)/.installed
	$(PY) -m services.common.sd.clip_tokenizer $(DATA_DIR)/clip

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

protos: install-dev  ## regenerate services/common/proto from protos/
	$(PY) scripts/gen_protos.py

# Known vulnerabilities in what is installed, from PyPI's advisory feed. Fails on a finding,
# and when a package could not be checked (no feed, or a name/version PyPI does not know),
# except local builds such as torch 2.13.0+cpu, which PyPI cannot know: those are listed.
audit: install-dev  ## audit the installed Python packages with pip-audit
	$(PIP) install --quiet pip-audit
	rm -f $(VENV)/pip-audit.json
	$(VENV)/bin/pip-audit --skip-editable --progress-spinner off --desc on -f json -o $(VENV)/pip-audit.json || true
	$(PY) scripts/audit_dependencies.py $(VENV)/pip-audit.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
