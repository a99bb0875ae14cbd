#!/usr/bin/env bash
# Writes constraints/locked.txt, the tested set, from a virtual environment in which the full suite passed:
#   bash scripts/lock.sh [VENV]        # default .venv; e.g. .venv-latest to move the lock to the newest release
# Exact `==` for everything installed there (`pip freeze --all --exclude-editable`), probekit itself left out.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
out=constraints/locked.txt
py=$VENV/bin/python
[ -x "$py" ] || { echo "error: no virtual environment at $VENV" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
{
  cat <<HEADER
# The tested set: every package, at the version the full test suite passed with (Python $("$py" -c 'import platform; print(platform.python_version(), platform.machine())'), Linux).
# pyproject.toml states only ranges (so \`pip install probekit\` keeps a user's own torch build); this file is a pip
# constraints file: scripts/install.sh (\`make test\`, \`make book\`, CI) installs with
#   pip install -c constraints/locked.txt -e '.[test]'
# and re-installs .venv whenever this file changes. \`make test-latest\` uses it too, minus transformers and what
# transformers depends on, for the newest transformers 5.x (.venv-latest).
# Made by scripts/lock.sh: \`pip freeze --all --exclude-editable\` of $VENV, probekit left out.
# To refresh: \`make test-latest\`, run the full suite there (.venv-latest/bin/python -m pytest), then
# \`bash scripts/lock.sh .venv-latest\`; or upgrade .venv by hand, \`make test\`, \`bash scripts/lock.sh\`. Commit the
# result; raise pyproject.toml's lower bounds if the lock moved past them and the old ones are no longer tested.
HEADER
  "$py" -m pip freeze --all --exclude-editable | grep -viE '^(probekit==|#|-e )'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -vc '^#' "$out") packages from $VENV)"
