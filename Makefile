# The front door: `make book` builds the book on the embedded default; `make test` runs the tests (what CI runs).
# Both set up everything first (Debian packages, .venv at the versions of constraints/locked.txt) — see
# scripts/install.sh. `make test` runs the full suite on the locked set, then the fast tests (-m "not slow") on
# the newest transformers 5.x (.venv-latest: the same lock but transformers, re-resolved on every run; PyPI).
# `make test-locked` / `make test-latest` run one half each.
.PHONY: book test install install-latest test-locked test-latest

install:
	bash scripts/install.sh

book: install
	.venv/bin/probekit book

test: test-locked test-latest

test-locked: install
	.venv/bin/python -m pytest

install-latest:
	bash scripts/install.sh --newest

test-latest: install-latest
	.venv-latest/bin/python -m pytest -m "not slow" -W error::FutureWarning
	@.venv-latest/bin/python -c "import transformers, torch; print(f'== tested (fast suite): transformers {transformers.__version__}, torch {torch.__version__}')"
