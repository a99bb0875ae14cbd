"""Paper C's claims beside this build's measurements: the numbers each claim is judged on (:func:`task_findings`,
with paired bootstrap differences on the same held-out images), the chapter's record for the reproduction-status
page (:func:`record_payload`, collected by :mod:`probekit.book.build`), its rows of the claims table
(:func:`status_rows`, from the record alone) and the chapter's reading of its own numbers (:func:`findings_note`).

Reported values come only from ``shared/reference/papers.md`` (labelled confirmed / secondary there).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ...stats import paired_difference
from .analysis import VisionRun, group_names
from .tasks import TASK_TITLES

RECORD_NAME = "visual_layers"


def _best(layers: pd.DataFrame, group: str | list[str]):
    groups = [group] if isinstance(group, str) else group
    sub = layers[layers.group.isin(groups)]
    if not len(sub):
        return None
    b = sub.loc[sub.accuracy.idxmax()]
    return {"layer": int(b.layer), "accuracy": float(b.accuracy), "ci": [float(b.ci_low), float(b.ci_high)]}


def _paired(results: pd.DataFrame, task: str, g: pd.DataFrame, a: dict | None, b: dict | None,
            seed: int) -> dict | None:
    """Paired bootstrap of accuracy(a) - accuracy(b) on the task's held-out images (a, b: layer dicts or the
    fusion, which is the row after the last layer)."""
    correct = results.attrs.get("correct", {}).get(task)
    if correct is None or not a or not b:
        return None
    n_layers = int((g.kind == "layer").sum())
    col = lambda x: n_layers if "layers" in x else x["layer"]  # noqa: E731
    d, lo, hi = paired_difference(correct, col(a), col(b), n_boot=int(results.attrs.get("n_boot", 1000)), seed=seed)
    return {"diff": d, "ci": [lo, hi]}


def task_findings(vr: VisionRun, results: pd.DataFrame) -> dict:
    """Per task the numbers the claims are judged on (best layer per group, default layer, fusion), and paired
    bootstrap differences on the same held-out images: shallow/middle minus deep, fusion minus best single."""
    out = {}
    for t, g in results.groupby("task", sort=False):
        layers = g[g.kind == "layer"]
        f = g[g.kind == "fusion"].iloc[0]
        d = layers[layers.layer == vr.default_layer].iloc[0]
        best = layers.loc[layers.accuracy.idxmax()]
        out[t] = {
            "chance": float(g.chance.iloc[0]), "n_test": int(g.n_test.iloc[0]),
            "best": {"layer": int(best.layer), "group": best.group, "accuracy": float(best.accuracy),
                     "ci": [float(best.ci_low), float(best.ci_high)]},
            "shallow": _best(layers, "shallow"), "middle": _best(layers, "middle"), "deep": _best(layers, "deep"),
            "shallow_or_middle": _best(layers, ["shallow", "middle"]),
            "default": {"layer": int(d.layer), "accuracy": float(d.accuracy), "ci": [float(d.ci_low), float(d.ci_high)]},
            "fusion": {"layers": [int(x) for x in vr.fusion], "accuracy": float(f.accuracy),
                       "ci": [float(f.ci_low), float(f.ci_high)]},
        }
        x = out[t]
        x["shallow_middle_minus_deep"] = _paired(results, t, g, x["shallow_or_middle"], x["deep"], vr.seed)
        x["fusion_minus_best"] = _paired(results, t, g, x["fusion"], x["best"], vr.seed)
    return out


def _cmp(a: dict | None, b: dict | None) -> str:
    """How ``a`` compares with ``b``: higher / lower when their 95 % CIs do not overlap, else not separable."""
    if not a or not b:
        return "n/a"
    if a["ci"][0] > b["ci"][1]:
        return "higher (95 % CIs apart)"
    if a["ci"][1] < b["ci"][0]:
        return "lower (95 % CIs apart)"
    return "not separable (95 % CIs overlap)"


def _diff(p: dict | None) -> str:
    """A paired difference in words: higher / lower when its 95 % interval excludes 0, else no clear difference."""
    if not p:
        return "n/a"
    word = "higher" if p["ci"][0] > 0 else "lower" if p["ci"][1] < 0 else "no clear difference"
    return f"{word} (difference {p['diff']:+.3f}, paired 95 % CI {p['ci'][0]:+.3f} to {p['ci'][1]:+.3f})"


def _sm_vs_deep(x: dict) -> str:
    p = x.get("shallow_middle_minus_deep")
    return _diff(p) if p else _cmp(x["shallow_or_middle"], x["deep"])


def fusion_tally(findings: dict) -> dict:
    """Tasks where the fusion is above / level with / below the best single layer (paired 95 % CI of the
    difference excludes 0 or not; CI overlap when no paired difference is available)."""
    out = {"above": [], "level": [], "below": []}
    for t, x in findings.items():
        v = _diff(x.get("fusion_minus_best")) if x.get("fusion_minus_best") else _cmp(x["fusion"], x["best"])
        out["above" if v.startswith("higher") else "below" if v.startswith("lower") else "level"].append(t)
    return out


def record_payload(vr: VisionRun, results: pd.DataFrame) -> dict:
    """What chapter 06 measured, for the reproduction-status page (:func:`status_rows`)."""
    names = group_names(len(vr.groups))
    return {"model": vr.model_id, "vision_layers": vr.n_layers, "image_size": vr.image_size,
            "n_per_class": vr.n_per_class, "n_images": vr.n_images, "seed": vr.seed, "data": vr.data_label,
            # a list, not a dict: notebooks store JSON with sorted keys, which would reorder the groups
            "groups": [[n, g[0], g[-1]] for n, g in zip(names, vr.groups)], "fusion_layers": list(vr.fusion),
            "fusion_rule": vr.fusion_rule, "default_layer": vr.default_layer,
            "feature_set": str(results.feature_set.iloc[0]), "tasks": task_findings(vr, results),
            "group_table": json.loads(vr.group_table().to_json(orient="records"))}


def _acc(x: dict | None) -> str:
    return "—" if not x else f"{x['accuracy']:.3f} (layer {x['layer']})"


def _num(x) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x}"


def verdict_rows(rec: dict | None) -> dict[str, dict]:
    """Each measured claim of paper C -> {claim, verdict, because}, by the rule of :mod:`probekit.papers.directional`
    (methods page); the LRS grouping by its own rule (three groups, each more alike within than to the others)."""
    from .. import directional as D

    if not rec:
        return {}
    out = {}
    gt = {r["group"]: r for r in rec.get("group_table", [])}
    groups = rec.get("groups", [])
    tighter = [n for n, _, _ in groups if n in gt and gt[n]["mean LRS within"] is not None
               and gt[n]["mean LRS to other groups"] is not None
               and gt[n]["mean LRS within"] > gt[n]["mean LRS to other groups"]]
    out["groups"] = {"claim": "LRS groups the vision layers into shallow, middle and deep",
                     "verdict": D.REPRODUCED if len(groups) == 3 and len(tighter) == 3 else D.NOT_REPRODUCED,
                     "because": f"{len(groups)} groups cut; {len(tighter)} of them more alike within than to the "
                                "other groups (mean LRS)"}
    T = rec.get("tasks", {})
    for key, task, sign, claim in (("ocr", "reading", -1, "deep layers are essential for OCR (reading digits)"),
                                   ("counting", "count", 1, "shallow and middle layers beat deep ones on counting"),
                                   ("positioning", "position", 1, "shallow and middle layers beat deep ones on "
                                                                  "positioning")):
        d = (T.get(task) or {}).get("shallow_middle_minus_deep")
        if d:
            out[key] = {"claim": claim, "verdict": D.signed(d["ci"], sign),
                        "because": D.because({task: d}, "best shallow/middle layer minus best deep layer")}
    diffs = {t: x.get("fusion_minus_best") for t, x in T.items() if x.get("fusion_minus_best")}
    if diffs:
        out["fusion"] = {"claim": "a shallow+middle+deep fusion beats the single layers",
                         "verdict": D.tally({t: D.signed(d["ci"]) for t, d in diffs.items()}),
                         "because": D.because(diffs, "fusion minus the best single layer (picked on the same images)")}
    return out


def verdict_paragraph(rec: dict) -> str:
    """Chapter 6's closing verdicts in plain words (generated: a re-run on another model rewrites them)."""
    from .. import directional as D

    return D.paragraph("paper C", rec["model"], list(verdict_rows(rec).values()))


def status_rows(rec: dict | None) -> list[str]:
    """Markdown table rows ``| claim | reported (source) | measured here | verdict | model |`` for paper C's claims.

    Reported values come only from ``shared/reference/papers.md`` (labelled confirmed / secondary there).
    """
    na = "not measured in this build"
    m = f"`{rec['model']}`" if rec else "—"
    rows = []
    VR = verdict_rows(rec)

    def row(claim, reported, measured, key=None):
        rows.append(f"| {claim} | {reported} | {measured} | {VR[key]['verdict'] if key in VR else '—'} | {m} |")

    if rec:
        V = rec["vision_layers"]
        groups = sorted(rec["groups"], key=lambda g: g[1])
        gtxt = ", ".join(f"{n} {a}–{b}" if a != b else f"{n} {a}" for n, a, b in groups)
        gt = {r["group"]: r for r in rec["group_table"]}
        wb = "; ".join(f"{n}: within {_num(gt[n]['mean LRS within'])}, to others "
                       f"{_num(gt[n]['mean LRS to other groups'])}"
                       for n, _, _ in groups if n in gt)
        row("(C) LRS groups the vision encoder's layers into shallow, middle and deep",
            "stated qualitatively (**confirmed**, abstract)", f"groups cut from LRS (optimal contiguous segmentation): "
            f"{gtxt} of {V} blocks; mean LRS {wb}", "groups")
        ends = ", ".join(f"{b / V:.2f}" for _, _, b in groups)
        row("(C) Group boundaries (CLIP ViT-L/14-336, 24 layers)",
            "boundaries at layers 12, 20, 24 (**confirmed**, official figure caption); shallow 1–12, middle 13–20, "
            "deep 21–24 (**secondary**)", f"{gtxt}; group ends at normalized depth {ends} (the paper's 12, 20, 24 of 24 layers: 0.50, 0.83, 1.00)")
        T = rec["tasks"]
        r = T.get("reading")
        if r:
            row("(C) Deep layers are essential for OCR", "stated qualitatively (**confirmed**, abstract)",
                f"reading (held-out digits): best deep {_acc(r['deep'])} vs best shallow {_acc(r['shallow'])}, "
                f"best middle {_acc(r['middle'])}; best shallow/middle vs best deep: "
                f"{_sm_vs_deep(r)}", "ocr")
        for t, label in (("count", "counting"), ("position", "positioning")):
            x = T.get(t)
            if x:
                row(f"(C) Shallow and middle layers beat deep ones on {label}",
                    "stated qualitatively (**confirmed**, abstract)",
                    f"{label}: best shallow/middle {_acc(x['shallow_or_middle'])} vs best deep {_acc(x['deep'])}: "
                    f"{_sm_vs_deep(x)}; the model's default layer {x['default']['layer']}: "
                    f"{x['default']['accuracy']:.3f}", {"count": "counting", "position": "positioning"}[t])
        tally = fusion_tally(T)
        detail = "; ".join(f"{t} {x['fusion']['accuracy']:.3f} vs {x['best']['accuracy']:.3f} (layer {x['best']['layer']})"
                           for t, x in T.items())
        row("(C) A lightweight shallow+middle+deep fusion beats single layers",
            "on 9 of 10 datasets (**confirmed**, abstract)",
            f"fusion of layers {'+'.join(map(str, rec['fusion_layers']))} vs the best single layer (picked on the "
            f"held-out images): above on {len(tally['above'])}, level on {len(tally['level'])}, below on "
            f"{len(tally['below'])} of {len(T)} tasks ({detail}; linear probes, not trained MLLMs)", "fusion")
        row("(C) Middle layer beats the penultimate on CV-Bench", "layer 18 = 47.29 vs layer 23 = 44.26 (**secondary**)",
            "different benchmark and models: not comparable; see the counting/positioning rows")
        row("(C) Penultimate layer beats a middle layer on OCRBench", "233 vs 200 (**secondary**)",
            "different benchmark and models: not comparable; see the OCR row")
    else:
        for claim in ("(C) LRS groups the vision encoder's layers into shallow, middle and deep",
                      "(C) Deep layers are essential for OCR", "(C) Shallow and middle layers beat deep ones on counting "
                      "and positioning", "(C) A lightweight shallow+middle+deep fusion beats single layers"):
            row(claim, "stated qualitatively (**confirmed**, abstract)", na)
    row("(C) MLLMs trained with the projector on a shallow / middle / deep layer or the fusion (main experiment)",
        "LLaVA-style models 1.4B–7B, 10 datasets, 4 tasks (**confirmed**, abstract)",
        "not run: did not fit the CPU budget; chapter 6 probes the vision layers linearly instead" if rec else na)
    return rows


def findings_note(vr: VisionRun, results: pd.DataFrame) -> str:
    """The chapter's reading of its own numbers (markdown), written from the measured values."""
    T = task_findings(vr, results)
    names = group_names(len(vr.groups))
    gtxt = ", ".join(f"**{n}** {g[0]}–{g[-1]}" if len(g) > 1 else f"**{n}** {g[0]}" for n, g in zip(names, vr.groups))
    lines = [f"On `{vr.model_id}` ({vr.n_layers} vision blocks) LRS cuts the blocks into {gtxt}; the fusion reads "
             f"layers {' + '.join(map(str, vr.fusion))} (each group's {vr.fusion_rule} layer) and the model's own "
             f"projector reads layer {vr.default_layer}.", ""]
    for t, x in T.items():
        per = ", ".join(f"{n} {x[n]['accuracy']:.3f}" for n in names if x.get(n))
        lines.append(f"- **{TASK_TITLES[t]}** (chance {x['chance']:.3f}, {x['n_test']} held-out images): best layer "
                     f"{x['best']['layer']} ({x['best']['group']}, {x['best']['accuracy']:.3f}); best per group: {per}; "
                     f"default layer {x['default']['accuracy']:.3f}; fusion {x['fusion']['accuracy']:.3f}, "
                     f"vs the best single layer: {_diff(x.get('fusion_minus_best'))}; best shallow/middle vs "
                     f"best deep: {_diff(x.get('shallow_middle_minus_deep'))}.")
    if len(vr.groups) < 3:
        lines += ["", f"_This tower has {vr.n_layers} blocks, too few for three groups: the groups are "
                      f"{', '.join(names)}, and the paper's shallow/middle/deep comparison is only partly posed._"]
    return "\n".join(lines)


__all__ = ["RECORD_NAME", "verdict_paragraph", "verdict_rows", "findings_note", "fusion_tally", "record_payload", "status_rows", "task_findings"]
