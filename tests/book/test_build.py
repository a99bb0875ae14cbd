"""The book: `build_book` on small parameters (tiny random-weight models) builds every chapter page with
its charts; a second build re-uses the cached activations; a headless Chromium with no network renders
every chart from the vendored vega libraries."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from probekit.book.build import CHAPTERS, build_book
from probekit.book.status import status_page

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference" / "papers.md"
# charts each chapter shows with two models in chapter 04 and no controlled pairs
MIN_CHARTS = {"01_setup": 1, "02_four_stages": 3, "03_decision_vs_format": 1, "04_architecture_comparison": 3,
              "05_visual_tokens": 3, "06_visual_layer_selection": 2}
DIV = re.compile(r'<div id="(altair-viz-[0-9a-f]{32})" class="probekit-vega')

pytestmark = pytest.mark.slow


def copy_book_sources(dst: Path) -> Path:
    """A book root with the repository's book sources only (the build does not touch the checkout)."""
    for f in ("_config.yml", "_toc.yml"):
        shutil.copy(ROOT / f, dst / f)
    shutil.copytree(ROOT / "notebooks", dst / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (dst / "book").mkdir()
    for f in ("intro.md", "methods.md"):
        shutil.copy(ROOT / "book" / f, dst / "book" / f)
    shutil.copytree(ROOT / "book" / "_static", dst / "book" / "_static")
    return dst


@pytest.fixture(scope="module")
def built(tiny_dirs, tmp_path_factory):
    root = copy_book_sources(tmp_path_factory.mktemp("bookroot"))
    cache = root / ".cache" / "probekit"
    logs = []
    html = build_book(root, model_id=str(tiny_dirs["llava"]),
                      model_ids=[str(tiny_dirs["llava"]), str(tiny_dirs["qwen2_vl"])], n_per_class=3,
                      cache_dir=cache, log=logs.append)
    return {"root": root, "html": html, "cache": cache, "logs": logs, "tiny": tiny_dirs}


def page(built, name) -> Path:
    return built["html"] / "book" / f"{name}.html"


def test_every_chapter_page_with_its_charts(built):
    assert (built["html"] / "index.html").is_file()
    for name in CHAPTERS:
        text = page(built, name).read_text()
        n = len(DIV.findall(text))
        assert n >= MIN_CHARTS[name], f"{name}: {n} charts"
        assert text.count('<figcaption class="probekit-caption">Model: ') >= n  # every chart has its caption
        assert "seed = 0" in text and "n = " in text
        for lib in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
            assert f'src="../_static/vega/{lib}' in text, f"{name} does not load the vendored {lib}"
        # papermill's injected-parameters cell is collapsed
        assert re.search(r'class="[^"]*tag_injected-parameters[^"]*tag_hide-input', text) or \
            re.search(r'class="[^"]*tag_hide-input[^"]*tag_injected-parameters', text), name
    for f in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
        assert (built["html"] / "_static" / "vega" / f).stat().st_size > 50_000
    for name in ("intro", "methods", "reproduction-status"):
        assert page(built, name).is_file()


def test_stage_table_on_the_page(built):
    text = page(built, "02_four_stages").read_text()
    assert "first_layer" in text and "answer decoding" in text


def test_second_build_reuses_activations(built):
    stores = sorted(p.parent for p in built["cache"].rglob("manifest.json"))
    assert stores, "no activation store in the cache"
    before = {p: p.stat().st_mtime_ns for s in stores for p in s.glob("shard-*.safetensors")}
    logs = []
    build_book(built["root"], model_id=str(built["tiny"]["llava"]), n_per_class=3, cache_dir=built["cache"],
               chapters=["01_setup"], html=False, log=logs.append)
    after = {p: p.stat().st_mtime_ns for s in stores for p in s.glob("shard-*.safetensors")}
    assert before == after
    assert sorted(p.parent for p in built["cache"].rglob("manifest.json")) == stores


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?", text))


def test_status_page_shows_only_reference_numbers(built):
    text = page(built, "reproduction-status").read_text()
    assert "confirmed" in text and "secondary" in text
    src = (built["root"] / "book" / "reproduction-status.md").read_text()
    reported = [line.split("|")[2] for line in src.splitlines() if line.startswith("| ") and line.count("|") >= 5][1:]
    nums = set().union(*(_numbers(r) for r in reported))
    allowed = {"1", "4", "5", "13", "12", "15", "16", "10", "20", "21", "28", "40",
               # paper C (chapter 6): boundaries 12, 20, 24; 9 of 10 datasets; 1.4B–7B; layer 18 = 47.29 vs
               # layer 23 = 44.26; 233 vs 200 (all in shared/reference/papers.md)
               "24", "9", "1.4", "7", "18", "47.29", "23", "44.26", "233", "200",
               # paper B (chapter 5): 33.3 % of BLINK Art Style questions (shared/reference/papers.md)
               "33.3"}
    assert nums <= allowed, nums - allowed
    if REFERENCE.is_file():
        ref = _numbers(REFERENCE.read_text())
        assert nums <= ref, nums - ref


def test_status_page_without_measurements_shows_no_numbers_as_measured():
    page_md = status_page({})
    rows = [line.split("|") for line in page_md.splitlines() if line.startswith("| ") and line.count("|") >= 5][1:]
    assert rows and all(r[3].strip() == "not measured in this build" for r in rows)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _offline_prefix() -> list[str]:
    """Run in a new network namespace (no interfaces but loopback) when possible."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    if unshare and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0:
        return [unshare, "-rn"]
    return []


@pytest.mark.skipif(_chromium() is None, reason="Debian package chromium is not installed (scripts/install.sh)")
def test_charts_render_in_chromium_offline(built):
    chrome = _chromium()
    for name in CHAPTERS:
        cmd = [*_offline_prefix(), chrome, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
               "--virtual-time-budget=20000", "--dump-dom", page(built, name).as_uri()]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        divs = re.findall(r'<div id="(altair-viz-[0-9a-f]{32})"[^>]*>(.{0,40})', dom)
        assert len(divs) >= MIN_CHARTS[name], f"{name}: {len(divs)} chart divs in the DOM"
        empty = [d for d, inner in divs if not inner.startswith(("<svg", "<canvas"))]
        assert not empty, f"{name}: charts not rendered: {empty}"


def test_cli_book_arguments():
    from probekit.cli import build_parser

    a = build_parser().parse_args(["book", "--model-id", "m", "--model-ids", "a,b", "--n-per-class", "5",
                                   "-p", "drop", "0.2", "--no-html"])
    assert (a.command, a.model_id, a.model_ids, a.n_per_class, a.parameter, a.no_html) == (
        "book", "m", "a,b", 5, [["drop", "0.2"]], True)
