"""What chapter 05 states: its tables (:func:`summary_table`, :func:`model_facts`, :func:`causality_table`), its
notes (:func:`findings_note`, :func:`agnostic_note`, :func:`conditions_note`), the record it leaves for the
reproduction-status page (:func:`record_payload`, named :data:`RECORD_NAME`) and that page's rows for paper B's
claims (:func:`status_rows`, which :mod:`probekit.book.build` calls with the collected record).

Every text is made from the measured numbers (:mod:`.analysis`); reported values come only from the project's
reference notes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .analysis import (
    BASELINES,
    KINDS,
    TASKS,
    Perception,
    TokensRun,
    affected_layers,
    findings,
)

RECORD_NAME = "visual_tokens"


def _fmt(r) -> str:
    return f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def summary_table(tr: TokensRun, res: Perception) -> pd.DataFrame:
    """Per task (main metric): the two baselines, the best layer of each kind, and the values' best layer under
    each other condition."""
    out = []
    for task, (metric, _) in TASKS.items():
        row = {"task": task, "metric": metric}
        for b in BASELINES:
            if (("plain", task, metric, b, -1)) in res.boot:
                row[b] = _fmt(res.row("plain", task, metric, b))
            else:
                row[b] = "— (no text side)"
        for k in KINDS:
            r = res.best("plain", task, k)
            row[f"best {k}"] = f"{_fmt(r)} (layer {int(r.layer)})"
        for cond in tr.conditions:
            if cond != "plain":
                r = res.best(cond, task)
                row[f"best values, {cond}"] = f"{_fmt(r)} (layer {int(r.layer)})"
        ch = res.table[(res.table.task == task) & (res.table.metric == metric)].chance.dropna()
        row["chance"] = f"{ch.iloc[0]:.3f}" if len(ch) else "—"
        out.append(row)
    return pd.DataFrame(out)


def _word(d: dict | None) -> str:
    if not d or np.isnan(d["ci"][0]):
        return "n/a"
    w = "higher" if d["ci"][0] > 0 else "lower" if d["ci"][1] < 0 else "no clear difference"
    return f"{w} ({d['diff']:+.3f}, paired 95 % CI {d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})"


def findings_note(tr: TokensRun, res: Perception) -> str:
    """Per task, the best values layer against the two baselines (markdown, from the measured values)."""
    lines = []
    for task, x in findings(tr, res).items():
        bv = x["best_values"]
        parts = [f"- **{task}** ({x['metric']}): best values layer {bv['layer']} = {bv['score']:.3f}"]
        for base in BASELINES:
            if base in x:
                parts.append(f"vs the {base} {x[base]['score']:.3f}: {_word(x[f'values_minus_{base}'])}")
        if task == "text query":
            parts.append(f"with the other classes' queries at that layer {x['other_classes']:.3f}: the own class is "
                         f"{_word(x['true_minus_other'])}")
        lines.append("; ".join(parts) + ".")
    return "\n".join(lines)


def conditions_note(tr: TokensRun, res: Perception) -> str:
    """Per condition other than plain, the values' change per task, averaged over the layers it can change."""
    F = findings(tr, res)
    lines = []
    for c in tr.conditions:
        if c == "plain":
            continue
        what = f"the text prefix {tr.prefix!r}" if c == "prefix" else f"blocking {block_text(tr)}"
        lay = affected_layers(tr, c)
        if not lay:
            lines.append(f"- **{c}** — {what}: no measured layer can change.")
            continue
        per = "; ".join(f"{task} {_word(x.get(f'{c}_minus_plain'))}" for task, x in F.items())
        lines.append(f"- **{c}** — {what}; values minus plain, averaged over the layers it can change "
                     f"({_span(lay)}): {per}.")
    return "\n".join(lines) or "Only the plain condition was run (no prefix, nothing to block)."


def _span(layers) -> str:
    layers = list(layers)
    if not layers:
        return "none"
    return f"{layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1 \
        else ", ".join(map(str, layers))


def agnostic_note(tr: TokensRun) -> str:
    """The input-agnostic-key finding in words: the lowest ratios, what the rule flagged, or that it flagged nothing."""
    lo = np.unravel_index(np.argmin(tr.variance), tr.variance.shape)
    late_idx = [tr.layers.index(l) for l in tr.late]
    s = (f"Lowest normalized cross-image variance of any key: {tr.variance[lo]:.3f} (layer {tr.layers[lo[0]]}, token "
         f"{lo[1]}); lowest in the late layers ({', '.join(map(str, tr.late)) or 'none'}): "
         f"{float(tr.variance[late_idx].min()) if late_idx else float('nan'):.3f}. ")
    if tr.agnostic:
        n = sum(len(v) for v in tr.agnostic.values())
        pos = sorted({t for v in tr.agnostic.values() for t in v})
        s += (f"**{n} late-layer key position(s) are input-agnostic** by the rule (ratio < {tr.threshold}): "
              + "; ".join(f"layer {l}: token{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}"
                          for l, v in tr.agnostic.items())
              + ". The same ratio of the LM's *input* (the projector output) at "
              + ", ".join(f"token {t}: {tr.input_variance[t]:.3f}" for t in pos)
              + " — where the input itself hardly varies (e.g. a corner that is background in every image), a low "
                "key variance says little about the model.")
    else:
        s += (f"**No late-layer key is input-agnostic** by the rule (ratio < {tr.threshold}) on this model. The "
              "blocking experiment below therefore blocks stand-ins — the lowest-variance key of each late layer — "
              "to show what blocking does, not to test the paper's artifact claim." if tr.block else
              f"**No late-layer key is input-agnostic** by the rule (ratio < {tr.threshold}); nothing is blocked.")
    return s


def block_text(tr: TokensRun) -> str:
    """What the blocked condition blocks, in words (layers, tokens, and whether the rule or stand-ins chose them)."""
    if not tr.block:
        return "nothing (no late layer selected)"
    pairs = "; ".join(f"layer {l}: token{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}" for l, v in tr.block.items())
    return pairs + (" (input-agnostic by the rule)" if tr.block_source == "rule"
                    else " (stand-ins: the lowest-variance keys of each late layer; none is input-agnostic by the rule)")


def model_facts(tr: TokensRun) -> pd.DataFrame:
    """The model and the stores, as a two-column table (from the model's identity and what the stores record)."""
    kv, hd = int(tr.facts["kv_heads"]), int(tr.facts["head_dim"])
    st = tr.stores[("plain", "original")]
    facts = {"model": tr.model_id, "class": tr.identity["architecture"],
             "decoder blocks": f"{tr.n_layers} (measured: {', '.join(map(str, tr.layers))})",
             "key / value width per token": f"{kv} KV heads x {hd} = {kv * hd}",
             "image tokens per image": f"{st.extra['n_image_tokens']} ({int((tr.cells >= 0).sum())} on the "
                                       f"{tr.grid[0]}x{tr.grid[1]} grid of the base view)",
             "image size (from the processor)": f"{tr.image_size} px, one grid cell = "
                                                f"{tr.image_size / tr.grid[1]:g} x {tr.image_size / tr.grid[0]:g} px",
             "vision encoder output width": str(st.quantities["vision"][-1]),
             "prompt (after the image)": tr.prompt, "text prefix (prefix condition)": repr(tr.prefix),
             "stores (one per condition and view)": str(tr.cache_root)}
    return pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}).set_index("")


def causality_table(tr: TokensRun) -> pd.DataFrame:
    """The causality check (:func:`probekit.extract.kv.causality_check`) as a one-row table."""
    c = tr.causality
    return pd.DataFrame([{"images": c["n_images"], "prompt A (after the image)": c["prompts"][0],
                          "prompt B": c["prompts"][1], "max |Δ key|": f"{c['keys']:.1e}",
                          "max |Δ value|": f"{c['values']:.1e}"}])


def record_payload(tr: TokensRun, res: Perception) -> dict:
    """What chapter 05 measured, for the reproduction-status page (:func:`status_rows`)."""
    return {"model": tr.model_id, "blocks": tr.n_layers, "layers": list(tr.layers), "n_images": tr.n_images,
            "n_per_class": tr.n_per_class, "seed": tr.seed, "data": tr.data_label, "grid": list(tr.grid),
            "shots": res.shots, "episodes": res.episodes, "prefix": tr.prefix, "causality": tr.causality,
            "threshold": tr.threshold, "late_from": tr.late_from, "late_layers": tr.late,
            # lists, not dicts keyed by layer: notebooks store JSON with sorted string keys
            "agnostic": [[int(l), list(v)] for l, v in tr.agnostic.items()],
            "blocked": [[int(l), list(v)] for l, v in tr.block.items()], "block_source": tr.block_source,
            "min_late_variance": float(tr.variance[[tr.layers.index(l) for l in tr.late]].min()) if tr.late else None,
            "conditions": list(tr.conditions), "tasks": findings(tr, res)}


CAUSAL_TOLERANCE = 1e-4  # float rounding: a key/value change at or below this is "does not depend on the text"


def verdict_rows(rec: dict | None) -> dict[str, dict]:
    """Each measured claim of paper B -> {claim, verdict, because}, by the rule of :mod:`probekit.papers.directional`
    (methods page): a paired difference's interval on the predicted side of zero, tallied over the tasks."""
    from .. import directional as D

    if not rec:
        return {}
    got = rec.get("tasks", {})
    T = {t: got[t] for t in TASKS if t in got}
    out = {}
    c = rec.get("causality") or {}
    worst = max(c.get("keys", np.nan), c.get("values", np.nan))
    if not np.isnan(worst):
        out["causality"] = {"claim": "image keys and values do not depend on the text after the image",
                            "verdict": D.REPRODUCED if worst <= CAUSAL_TOLERANCE else D.NOT_REPRODUCED,
                            "because": f"largest change {worst:.1e} (tolerance {CAUSAL_TOLERANCE:.0e}, float rounding)"}
    above = {t: {"diff": x["best_values"]["score"] - x["chance"],
                 "ci": [x["best_values"]["ci"][0] - x["chance"], x["best_values"]["ci"][1] - x["chance"]]}
             for t, x in T.items() if x.get("chance") is not None}
    out["values_carry"] = {"claim": "image values carry enough for zero-shot perception (best values layer above chance)",
                           "verdict": D.tally({t: D.signed(d["ci"]) for t, d in above.items()}),
                           "because": D.because(above, "best values layer minus chance, the layer picked on the same "
                                                       "images")}
    for key, base, sign, claim in (
            ("augments", "projector", 1, "the LM augments the projected encoder output (values above the projector)"),
            ("below_encoder", "vision encoder", -1, "the values hold less than the vision encoder (here: the model's "
                                                    "own, not SigLIP)")):
        diffs = {t: x.get(f"values_minus_{base}") for t, x in T.items() if x.get(f"values_minus_{base}")}
        out[key] = {"claim": claim, "verdict": D.tally({t: D.signed(d["ci"], sign) for t, d in diffs.items()}),
                    "because": D.because(diffs, f"best values layer minus the {base}")}
    if not rec.get("agnostic"):
        out["artifacts"] = {"claim": "late input-agnostic keys are artifacts that reduce perception",
                            "verdict": D.NOT_REPRODUCED,
                            "because": f"no late-layer key is input-agnostic by the rule (ratio < {rec['threshold']}; "
                                       f"lowest late ratio {rec.get('min_late_variance') or float('nan'):.3f}): the "
                                       "artifact did not appear"}
    else:
        diffs = {t: x.get("blocked_minus_plain") for t, x in T.items() if x.get("blocked_minus_plain")}
        out["artifacts"] = {"claim": "late input-agnostic keys are artifacts that reduce perception (blocking them helps)",
                            "verdict": D.tally({t: D.signed(d["ci"]) for t, d in diffs.items()}),
                            "because": D.because(diffs, "blocked minus plain")}
    diffs = {t: x.get("prefix_minus_plain") for t, x in T.items() if x.get("prefix_minus_plain")}
    if diffs:
        out["prefix"] = {"claim": "a text prefix before the image improves perception",
                         "verdict": D.tally({t: D.signed(d["ci"]) for t, d in diffs.items()}),
                         "because": D.because(diffs, "prefix minus plain")}
    return out


def verdict_paragraph(rec: dict) -> str:
    """Chapter 5's closing verdicts in plain words (generated: a re-run on another model rewrites them)."""
    from .. import directional as D

    return D.paragraph("paper B", rec["model"], list(verdict_rows(rec).values()))


def status_rows(rec: dict | None) -> list[str]:
    """Markdown table rows ``| claim | reported (source) | measured here | verdict | model |`` for paper B's claims.

    Reported values come only from ``shared/reference/papers.md`` (labelled confirmed / secondary there)."""
    na = "not measured in this build"
    m = f"`{rec['model']}`" if rec else "—"
    rows = []
    V = verdict_rows(rec)

    def row(claim, reported, measured, key=None):
        v = V[key]["verdict"] if key in V else "—"
        rows.append(f"| {claim} | {reported} | {measured if rec else na} | {v} | {m} |")

    got = (rec or {}).get("tasks", {})
    T = {t: got[t] for t in TASKS if t in got}  # the record's JSON has sorted keys: restore the chapter's order

    def best(task):
        x = T.get(task)
        return f"{x['best_values']['score']:.3f} (layer {x['best_values']['layer']})" if x else "—"

    c = (rec or {}).get("causality", {})
    row("(B) Under causal attention the image tokens' keys and values do not depend on the text that follows",
        "stated (**confirmed**, the paper's rationale)",
        f"largest change of any image key / value when only the question after the image changes: "
        f"{c.get('keys', float('nan')):.1e} / {c.get('values', float('nan')):.1e} ({c.get('n_images')} images)" if rec else na,
        "causality")
    row("(B) Image value tokens carry enough for zero-shot segmentation, semantic correspondence, temporal "
        "correspondence and referring-expression detection",
        "stated qualitatively (**confirmed**, abstract)",
        f"best values layer — few-shot segmentation mIoU {best('segmentation')}; correspondence PCK exact, flip "
        f"{best('correspondence (flip)')}, shift {best('correspondence (shift)')}; text-query AUROC "
        f"{best('text query')}; temporal correspondence and referring expressions not measured" if rec else na,
        "values_carry")
    parts = "; ".join(f"{t}: {_word(x.get('values_minus_projector'))}" for t, x in T.items())
    row("(B) The LM augments the visual information of the projected encoder output",
        "stated qualitatively (**confirmed**, abstract)",
        f"best values layer minus the projector output: {parts}" if rec else na, "augments")
    parts = "; ".join(f"{t}: {_word(x.get('values_minus_vision encoder'))}" for t, x in T.items()
                      if x.get("values_minus_vision encoder"))
    row("(B) ... yet holds less than a SigLIP encoder without MLM finetuning on several tasks",
        "stated qualitatively (**confirmed**, abstract)",
        f"best values layer minus this model's own vision encoder (frozen, never finetuned with the LM in the "
        f"organisms' recipe; not SigLIP): {parts}" if rec else na, "below_encoder")
    if rec:
        if rec["agnostic"]:
            found = "; ".join(f"layer {l}: tokens {', '.join(map(str, v))}" for l, v in rec["agnostic"])
            what = f"input-agnostic late-layer keys (ratio < {rec['threshold']}): {found}"
        else:
            what = (f"no input-agnostic late-layer key (ratio < {rec['threshold']}; lowest late ratio "
                    f"{rec['min_late_variance']:.3f})")
        eff = "; ".join(f"{t}: {_word(x.get('blocked_minus_plain'))}" for t, x in T.items() if x.get("blocked_minus_plain"))
        src = {"rule": "blocking them", "stand-in": "blocking stand-ins (lowest-variance late keys)"}.get(rec["block_source"])
        meas = what + (f"; {src}, values minus plain (mean over the layers blocking can change): {eff}" if src else "")
    row("(B) Input-agnostic image keys in later layers carry artifacts that reduce perception",
        "stated qualitatively (**confirmed**, abstract); found by low cross-image variance and removed by attention "
        "blocking (**secondary**)", meas if rec else na, "artifacts")
    eff = "; ".join(f"{t}: {_word(x.get('prefix_minus_plain'))}" for t, x in T.items() if x.get("prefix_minus_plain"))
    row("(B) A text prefix before the image improves perception", "stated qualitatively (**confirmed**, abstract)",
        (f"prefix {rec['prefix']!r}, values minus plain (mean over layers 2 and up): {eff}" if eff else "no prefix run")
        if rec else na, "prefix")
    row("(B) Perception information present in the LM does not reach the output",
        "in 33.3 % of BLINK Art Style questions (**confirmed**, abstract)",
        "not run: BLINK is not part of this build" if rec else na)
    row("(B) Protocols: few-shot segmentation with a linear classifier per value token (Pascal-5i); semantic "
        "correspondence by nearest neighbours of value tokens (SPair-71K); the class name's final token as a query "
        "(ImageNet-S)", "**secondary**",
        f"same protocols on Fashion-MNIST test images with exact token masks ({rec['grid'][0]}x{rec['grid'][1]} "
        f"grid; {rec['shots']}-shot x {rec['episodes']} episodes), correspondence under a known flip / shift" if rec else na)
    row("(B) Metric values, heads", "**unknown** (not in the reference)", "see chapter 5" if rec else na)
    return rows


__all__ = ["CAUSAL_TOLERANCE", "RECORD_NAME", "agnostic_note", "verdict_paragraph", "verdict_rows", "block_text", "causality_table", "conditions_note", "findings_note",
           "model_facts", "record_payload", "status_rows", "summary_table"]
