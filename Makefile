# The front door: `make book` builds the book on the embedded default; `make test` runs the tests.
# Both set up everything first (Debian packages, .venv) — see scripts/install.sh.
.PHONY: book test install

install:
	bash scripts/install.sh

book: install
	.venv/bin/probekit book

test: install
	.venv/bin/python -m pytest
