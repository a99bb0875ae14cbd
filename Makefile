# The front door: `make book` builds the book on the embedded default; `make test` runs the fast tests.
# Both set up everything first (Debian packages, .venv at the versions of constraints/locked.txt) — see
# scripts/install.sh. `make test-all` is what CI runs (.ci/run): the whole suite on the locked set (the slow
# end-to-end tests included: notebooks, the book, training runs, kill -9) and then the fast tests on the newest
# transformers 5.x (.venv-latest: the same lock but transformers, re-resolved on every run; needs PyPI).
.PHONY: book test test-all test-locked test-latest install install-latest

install:
	bash scripts/install.sh

book: install
	.venv/bin/probekit book

test: install
	.venv/bin/python -m pytest -m "not slow"

test-all: test-locked test-latest

test-locked: install
	.venv/bin/python -m pytest

install-latest:
	bash scripts/install.sh --newest

test-latest: install-latest
	.venv-latest/bin/python -m pytest -m "not slow" -W error::FutureWarning
	@.venv-latest/bin/python -c "import transformers, torch; print(f'== tested (fast suite): transformers {transformers.__version__}, torch {torch.__version__}')"
