# The front door: `make book` builds the book on the embedded default; `make test` runs the tests.
# Both set up everything first (Debian packages, .venv at the versions of constraints/locked.txt) — see
# scripts/install.sh. `make test-latest` runs the fast tests (-m "not slow") on the newest transformers 5.x
# instead (.venv-latest: the same lock but transformers, re-resolved on every run).
.PHONY: book test install install-latest test-latest

install:
	bash scripts/install.sh

book: install
	.venv/bin/probekit book

test: install
	.venv/bin/python -m pytest

install-latest:
	bash scripts/install.sh --newest

test-latest: install-latest
	.venv-latest/bin/python -m pytest -m "not slow"
	@.venv-latest/bin/python -c "import transformers, torch; print(f'== tested (fast suite): transformers {transformers.__version__}, torch {torch.__version__}')"
