"""A CLI that starts at once: ``probekit --help``, argument errors and ``import probekit`` import none of the
heavy libraries (torch, transformers: seconds); a command imports them when it runs. Every check runs in a
fresh interpreter, since this test session has long imported all of them."""

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers", "altair", "pandas", "sklearn")


def run_python(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON object as its last line, returned here."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


LOADED = f"[m for m in {HEAVY!r} if m in sys.modules]"


def test_import_probekit_imports_nothing_heavy():
    assert run_python(f"""
        import json, sys
        import probekit
        import probekit.errors
        from probekit.organisms import ORGANISMS, DEFAULT_ORGANISM, organism_path
        print(json.dumps({LOADED}))
    """) == []


def test_help_and_argument_errors_import_nothing_heavy(tmp_path):
    out = run_python(f"""
        import contextlib, io, json, sys
        import probekit.cli
        probekit.cli.build_parser()
        seen = {{}}
        for name, argv in {{
            "help": ["--help"],
            "extract-help": ["extract", "--help"],
            "no-model": ["extract", "--dataset", "digits", "--out", {str(tmp_path / "s")!r}],
            "bad-choice": ["train-organism", "no-such-organism"],
            "bad-int": ["extract", "--model", "m", "--dataset", "digits", "--out", "o", "--batch-size", "0"],
            "no-data-root": ["extract", "--model", "m", "--dataset", "image-folder", "--out", {str(tmp_path / "s")!r}],
            "bad-test-size": ["probe", {str(tmp_path / "store")!r}, "--out", "r.csv", "--test-size", "2"],
        }}.items():
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()) as std, contextlib.redirect_stderr(err):
                try:
                    code = probekit.cli.main(argv)
                except SystemExit as e:
                    code = e.code
            seen[name] = [code, std.getvalue(), err.getvalue()]
        print(json.dumps({{"loaded": {LOADED}, "seen": seen}}))
    """)
    seen = out["seen"]
    assert seen["help"][0] == 0 and "train-organism" in seen["help"][1]
    assert seen["extract-help"][0] == 0 and "--n-per-class" in seen["extract-help"][1]
    assert seen["no-model"][0] == 2 and "the following arguments are required: --model" in seen["no-model"][2]
    assert seen["bad-choice"][0] == 2 and "invalid choice: 'no-such-organism'" in seen["bad-choice"][2]
    assert seen["bad-int"][0] == 2 and "must be a positive integer, got 0" in seen["bad-int"][2]
    assert seen["no-data-root"][0] == 2 and "image-folder needs a folder" in seen["no-data-root"][2]
    assert seen["bad-test-size"][0] == 2 and "--test-size must be between 0 and 1" in seen["bad-test-size"][2]
    assert not (tmp_path / "s").exists()
    assert out["loaded"] == []


def test_python_m_probekit_cli_help_imports_nothing_heavy():
    """The entry point itself (``-m`` runs the package's ``__init__`` first), watched with ``-X importtime``."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "probekit.cli", "--help"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "train-organism" in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in r.stderr.splitlines()
                if line.startswith("import time:")}
    assert "probekit" in imported
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


def test_public_names_resolve_lazily_to_the_real_objects():
    out = run_python("""
        import importlib, json, sys
        import probekit
        before = "torch" in sys.modules
        ex = importlib.import_module("probekit.extract")  # the subpackage first: the public name stays the function
        from probekit import extract, load_model
        same = {name: getattr(probekit, name) is getattr(importlib.import_module(f"probekit.{mod}"), name)
                for name, mod in probekit._LAZY.items()}
        import probekit.organisms as O
        from probekit.organisms import recipe
        print(json.dumps({"before": before, "extract_is_function": extract is ex.extract and callable(extract),
                          "load_model": load_model is importlib.import_module("probekit.models").load_model,
                          "same": same, "all_in_dir": sorted(set(probekit.__all__) - set(dir(probekit))),
                          "all_resolve": all(hasattr(probekit, n) for n in probekit.__all__),
                          "organisms": O.Recipe is recipe.Recipe}))
    """)
    assert out["before"] is False
    assert out["extract_is_function"] and out["load_model"] and out["organisms"]
    assert all(out["same"].values()), out["same"]
    assert out["all_in_dir"] == [] and out["all_resolve"]
