"""The generated organisms page says, per shipped organism, what its card and organism.json say."""

import json
import shutil

from probekit.book.organisms_page import organisms_page
from probekit.organisms import SHIPPED_DIR


def test_each_shipped_organism_has_a_row_from_its_own_files(tmp_path):
    page = organisms_page()
    folders = [p.name for p in SHIPPED_DIR.iterdir() if (p / "README.md").is_file()]
    rows = {line.split("`")[1]: line for line in page.splitlines() if line.startswith("| `")}
    assert set(rows) == set(folders)
    assert "held out (" in rows["llava-organism"] and "test half" in rows["llava-organism"]
    readout = json.loads((SHIPPED_DIR / "llava-organism" / "organism.json").read_text())["vision_readout"]["accuracy"]
    assert f"the frozen vision tower's linear readout: {readout:.1%}" in rows["llava-organism"]
    assert "5.74 bits per weight" in page and "Not known" in page

    # a folder whose card lists no templates is reported as trained on the probe prompts
    shutil.copytree(SHIPPED_DIR / "llava-organism", tmp_path / "x-organism")
    card = tmp_path / "x-organism" / "README.md"
    card.write_text(card.read_text().split("Training templates (")[0])
    row = [r for r in organisms_page(tmp_path).splitlines() if r.startswith("| `x-organism`")][0]
    assert "trained on paper A's probe prompts" in row


def test_a_row_adds_the_seen_wording_control_when_the_report_has_it(tmp_path):
    shutil.copytree(SHIPPED_DIR / "llava-organism", tmp_path / "x-organism")
    meta_file = tmp_path / "x-organism" / "organism.json"
    meta = json.loads(meta_file.read_text())
    row = [r for r in organisms_page(tmp_path).splitlines() if r.startswith("| `x-organism`")][0]
    assert "own training wordings" not in row
    meta["held_out"]["digits/test"]["bank_wordings"] = {"bank": 0.99, "bank_negation_one_zero": 0.875}
    meta_file.write_text(json.dumps(meta))
    row = [r for r in organisms_page(tmp_path).splitlines() if r.startswith("| `x-organism`")][0]
    assert "its own training wordings: lowest 87.5%" in row
