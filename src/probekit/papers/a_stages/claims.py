"""Paper A's claims on the reproduction-status page: one row per claim, beside what this build measured, from the
records of chapters 2-4 (``four_stages``, ``decision_format``, ``comparison``)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from .analysis import answer_summary, pair_table

NA = "not measured in this build"


def layer_range(r) -> str:
    """A stage's ``(first, last)`` layers as text ("3", "3–7", or "—" for no layers)."""
    return "—" if not r else (f"{r[0]}" if r[0] == r[1] else f"{r[0]}–{r[1]}")


def depth_range(r, blocks) -> str:
    """The same range as normalized depth (layer / blocks), in brackets."""
    return "" if not r or not blocks else f" (depth {r[0] / blocks:.2f}–{r[1] / blocks:.2f})"


def intro_lines(records: Mapping) -> list[str]:
    """The sentence above the table: which model, data and thresholds chapter 2 ran with."""
    st = records.get("four_stages")
    lines = []
    if st:
        lines += [f"Chapter 2 ran on **{st['model']}** ({st['blocks']} decoder blocks), {st['data']}, "
                  f"n = {st['n_images']} images, seed {st['seed']}; segmentation thresholds drop = "
                  f"{st['params']['drop']}, info = {st['params']['info']}, smooth = {st['params']['smooth']}.", ""]
    return lines


def status_rows(records: Mapping) -> list[str]:
    """Paper A's rows of the claims table (``| claim | reported (source) | measured here | model |``)."""
    st = records.get("four_stages")
    cmp_ = records.get("comparison")
    dec = records.get("decision_format")
    na = NA
    lines = []

    def row(claim, reported, measured, model):
        lines.append(f"| {claim} | {reported} | {measured} | {model} |")

    seq = ", ".join(st["stage_sequence"]) if st else None
    row("Early layers: visual grounding; middle: lexical integration and semantic reasoning; final: answer "
        "decoding", "stated qualitatively (**confirmed**, abstract)",
        f"stages found, in order: {seq or 'none'}" if st else na, f"`{st['model']}`" if st else "—")
    if st:
        S = st["stages"]
        b = st["blocks"]
        for name, rep in (("visual grounding", "layers 1–4"), ("lexical integration", "layers 5–13"),
                          ("semantic reasoning", "layers 12–15"), ("answer decoding", "layers 16+")):
            row(f"Stage range: {name} (LLaVA-1.5)", f"{rep} (**secondary**)",
                f"layers {layer_range(S[name])}{depth_range(S[name], b)}" if S[name] else "no layers (stage empty)",
                f"`{st['model']}`")
    else:
        row("Stage ranges (LLaVA-1.5)", "grounding 1–4, lexical 5–13, semantic 12–15, decoding 16+ (**secondary**)",
            na, "—")
    qwen = (cmp_ or {}).get("models", {}).get("qwen2vl-organism")
    for name, rep in (("visual grounding", "layer 1"), ("lexical integration", "not given"),
                      ("semantic reasoning", "layers 10–20"), ("answer decoding", "layers 21–28")):
        rep_s = f"{rep} (**secondary**)" if rep != "not given" else "not given in the reference"
        qs = qwen["stages"][name] if qwen else None
        meas = (na if not qwen else f"layers {layer_range(qs)}{depth_range(qs, qwen['blocks'])}" if qs else "no layers (stage empty)")
        row(f"Stage range: {name} (Qwen2-VL)", rep_s, meas, "`qwen2vl-organism`" if qwen else "—")
    if st:
        ld = st.get("lexical_drop_max")
        where = "inside the lexical-integration stage" if st.get("lexical_drop_in_stage") else "over all layers (no lexical stage found)"
        meas = f"largest lexical-family drop {where}: {ld:.2f} accuracy" if ld is not None else na
    row("Lexical variants drop probe accuracy in the lexical-integration stage (LLaVA-1.5)",
        "by ~40 % (**secondary**)", meas if st else na, f"`{st['model']}`" if st else "—")
    pairs = (cmp_ or {}).get("pairs") or []
    for factor, claim in (("tokenizer", "Stage structure stable across visual tokenization"),
                          ("instruction data", "Stage structure stable across instruction-tuning data"),
                          ("pretraining corpus", "Stage structure stable across pretraining corpus")):
        p = next((x for x in pairs if x.get("factor") == factor), None)
        note = " (our organism varies the *text* tokenizer, not the visual tokenization)" if factor == "tokenizer" else ""
        meas = (f"{'same' if p['same stage sequence'] else 'different'} stage sequence; mean anchor-curve "
                f"difference {p['mean |Δ accuracy| (anchor, by depth)']:.3f}{note}") if p else na
        row(claim, "stated qualitatively (**confirmed**, abstract)", meas,
            f"`{p['model']}` vs `{p['reference']}`" if p else "—")
    p = next((x for x in pairs if x.get("factor") == "base LLM"), None)
    if p and cmp_:
        ms = cmp_["models"]
        a, r = ms[p["model"]], ms[p["reference"]]
        def starts(m):
            return ", ".join(f"{k.split()[0]} {m['stages'][k][0] / m['blocks']:.2f}" for k in m["stages"] if m["stages"][k])
        meas = (f"stage starts by normalized depth — {p['model']}: {starts(a)}; {p['reference']}: {starts(r)} "
                "(not a controlled pair: vision tower and image tokens differ too)")
    row("Layer allocation shifts with the base LLM", "stated qualitatively (**confirmed**, abstract)",
        meas if p else na, f"`{p['model']}` vs `{p['reference']}`" if p else "—")
    if dec:
        shared = dec.get("shared_layers") or []
        meas = (f"decision shared across formats at layer(s) {', '.join(map(str, shared)) or 'none'}; "
                + (f"formats part at layer {dec['parting_layer']} of {dec['blocks']}" if dec.get("parting_layer")
                   is not None else "no parting layer"))
    row("Where the decision parts from the output format", "no number in the reference", meas if dec else na,
        f"`{dec['model']}`" if dec else "—")
    row("Probe accuracy values, image counts, probe regularization", "**unknown** (not in the reference)",
        "see chapter 2" if st else na, f"`{st['model']}`" if st else "—")
    return lines


# ---- what chapters 1-4 say and record ---------------------------------------------------------------------------

def stage_record(run, results, seg) -> dict:
    """What chapter 02 measured: stage ranges, the largest lexical drop inside the lexical stage, peak accuracy."""
    ranges = seg.ranges()
    lex = seg.signals.get("s_lexical")
    lr = ranges["lexical integration"]
    lex_drop = None
    if lex is not None:
        window = [i for i, l in enumerate(seg.layers) if lr and lr[0] <= l <= lr[1]] or list(range(len(seg.layers)))
        lex_drop = float(np.max(lex[window]))
    anchor = results[results.variant == "anchor"]
    return {"model": run.model_id, "blocks": int(run.blocks), "n_images": run.n_images, "seed": run.seed,
            "data": run.data_label, "stages": {k: list(v) if v else None for k, v in ranges.items()},
            "stage_sequence": [k for k, v in ranges.items() if v], "lexical_drop_max": lex_drop,
            "lexical_drop_in_stage": bool(lr), "anchor_peak": float(anchor.accuracy.max()),
            "anchor_peak_layer": int(anchor.loc[anchor.accuracy.idxmax(), "layer"]),
            "params": {"drop": seg.params.drop, "info": seg.params.info, "smooth": seg.params.smooth}}


def comparison_record(comp, runs: dict) -> dict:
    models = {}
    for m, seg in comp.segmentations.items():
        models[m] = {"blocks": int(runs[m].blocks), "stages": {k: list(v) if v else None
                                                                      for k, v in seg.ranges().items()}}
    first = next(iter(runs.values()))
    return {"models": models, "pairs": json.loads(pair_table(comp).to_json(orient="records")) if len(comp.pairs) else [],
            "n_images": first.n_images, "seed": first.seed, "data": first.data_label}


def behaviour_note(run) -> str:
    """One paragraph: how often the model answers correctly per family, and what that means for the analysis."""
    s = answer_summary(run.store)
    worst = s.sort_values("answered_correctly").iloc[0]
    anchor = s[s.family == "anchor"].answered_correctly.mean()
    lines = [f"The model prefers the expected answer on **{anchor:.1%}** of the images under the anchor question."]
    if worst.answered_correctly < 0.75:
        lines.append(f"It answers worst under `{worst.variant}` ({worst.answered_correctly:.1%}): read the probe "
                     "results for that variant with care — the probes then describe a model that does not "
                     "solve the task as posed.")
    else:
        lines.append(f"Every variant is answered correctly on at least {worst.answered_correctly:.1%} of the images, so "
                     "the probes below describe a model that solves the task.")
    return " ".join(lines)


def parting_note(df) -> str:
    t = df.table
    shared = t[t["decision shared across formats"]].layer.tolist()
    p = df.parting_layer
    s = (f"The decision is decodable in both formats and transfers between them at layer(s) "
         f"{layer_list(shared)}." if shared else "No layer holds a decision that transfers between the formats "
         f"within {df.params.drop:.2f} accuracy.")
    specific = t[t["format-specific"]].layer.tolist()
    if specific:
        s += f" The decision is format-specific (transfer at least {df.params.drop:.2f} below within-format) at " \
             f"layer(s) {layer_list(specific)}."
    if p is None:
        s += (" No parting layer: the decision " + ("never transfers between the formats." if not shared else
              "stays shared after it first transfers."))
    else:
        s += (f" **The formats part at layer {p}**: the first layer after the shared decision where a probe "
              f"trained on one format falls at least {df.params.drop:.2f} below the within-format probe on the other.")
    return s


def layer_list(layers) -> str:
    layers = sorted(int(x) for x in layers)
    out, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(f"{layers[i]}" if i == j else f"{layers[i]}–{layers[j]}")
        i = j + 1
    return ", ".join(out)


def comparison_note(comp) -> str:
    if comp.pairs.empty:
        return ("None of these models is a controlled variant of another, so this page compares them side by side "
                "only; pass the organism family (the default `model_ids`) for the controlled comparisons.")
    t = pair_table(comp)
    parts = []
    for _, r in t.iterrows():
        same = "the same stage sequence" if r["same stage sequence"] else "a different stage sequence"
        parts.append(f"- **{r.factor}** (`{r.model}` vs `{r.reference}`{'' if r.controlled else ', not controlled'}): "
                     f"{same}; anchor curves differ by {r['mean |Δ accuracy| (anchor, by depth)']:.3f} accuracy on "
                     "average over normalized depth.")
    return "Measured on these models:\n\n" + "\n".join(parts)


