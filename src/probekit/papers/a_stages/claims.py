"""Paper A's claims on the reproduction-status page: one row per claim, beside what this build measured, from the
records of chapters 2-4 (``four_stages``, ``decision_format``, ``comparison``)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from . import verdicts as V
from .stages import STAGES, depth_text, layer_range

NA = "not measured in this build"


def depth_range(r, blocks) -> str:
    """The same range as normalized depth (layer / blocks), in brackets."""
    return "" if not r or not blocks else f" (depth {depth_text(r, blocks)})"


def intro_lines(records: Mapping) -> list[str]:
    """The sentence above the table: which model, data and thresholds chapter 2 ran with."""
    st = records.get("four_stages")
    lines = []
    if st:
        p = st["params"]
        lines += [f"Chapter 2 ran on **{st['model']}** ({st['blocks']} decoder blocks), {st['data']}, "
                  f"{st.get('n_test', '?')} held-out images, seed {st['seed']}; thresholds drop = {p['drop']}, "
                  f"info = {p['info']}, simultaneous bands at {1 - p.get('alpha', 0.05):.0%}. Verdicts follow the rule "
                  "on the methods page; a row that this build did not measure is inconclusive.", ""]
    return lines


def _verdict(rec: Mapping | None, key: str | None = None) -> tuple[str, str]:
    """(verdict, because) of one claim in a record (``key`` into its ``verdicts``), inconclusive when unmeasured."""
    if not rec:
        return V.INCONCLUSIVE, NA
    v = rec.get("verdicts", {}).get(key) if key else rec
    if not v or "verdict" not in v:
        return V.INCONCLUSIVE, NA
    return v["verdict"], v.get("because", "")


def status_rows(records: Mapping) -> list[str]:
    """Paper A's rows of the claims table (``| claim | reported (source) | measured here | verdict | model |``);
    every row carries one of the three verdicts."""
    st = records.get("four_stages")
    cmp_ = records.get("comparison") or {}
    dec = records.get("decision_format")
    lines = []
    model = f"`{st['model']}`" if st else "—"

    def row(claim, reported, measured, verdict, who):
        lines.append(f"| {claim} | {reported} | {measured} | **{verdict}** | {who} |")

    v, why = _verdict(st, "order")
    seq = ", ".join(st["stage_sequence"]) if st else None
    row("Early layers: visual grounding; middle: lexical integration and semantic reasoning; final: answer "
        "decoding (the four stages, in this order)", "stated qualitatively (**confirmed**, abstract)",
        f"stages found, in order: {seq or 'none'} ({why})" if st else NA, v, model)
    reported = {"visual grounding": "layers 1–4", "lexical integration": "layers 5–13",
                "semantic reasoning": "layers 12–15", "answer decoding": "layers 16+"}
    for name in STAGES:
        v, why = _verdict(st, f"presence:{name}")
        row(f"Stage present: {name}", "stated (**confirmed**, abstract)", why, v, model)
    for name in STAGES:
        v, why = _verdict(st, f"position:{name}")
        S = (st or {}).get("stages", {}).get(name)
        meas = (f"layers {layer_range(S)}{depth_range(S, st['blocks'])}; {why}" if S else f"no layers; {why}") if st else NA
        row(f"Stage depth: {name} (LLaVA-1.5 ranges as reported)", f"{reported[name]} (**secondary**)", meas, v, model)
    qwen = cmp_.get("models", {}).get("qwen2vl-organism")
    for name, rep in (("visual grounding", "layer 1"), ("semantic reasoning", "layers 10–20"),
                      ("answer decoding", "layers 21–28")):
        v, why = _verdict(qwen, f"position:{name}")
        qs = qwen["stages"][name] if qwen else None
        meas = NA if not qwen else (f"layers {layer_range(qs)}{depth_range(qs, qwen['blocks'])}; {why}" if qs else f"no layers; {why}")
        row(f"Stage depth: {name} (Qwen2-VL ranges as reported)", f"{rep} (**secondary**)", meas, v,
            "`qwen2vl-organism`" if qwen else "—")
    v, why = _verdict(st, "lexical_drop")
    row("Lexical variants drop probe accuracy (LLaVA-1.5)", "by ~40 % (**secondary**; relative or absolute not known)",
        why, v, model)
    pairs = cmp_.get("pairs") or []
    for factor, claim in (("tokenizer", "Stage structure stable across visual tokenization"),
                          ("instruction data", "Stage structure stable across instruction-tuning data"),
                          ("pretraining corpus", "Stage structure stable across pretraining corpus")):
        p = next((x for x in pairs if x.get("factor") == factor), None)
        note = " (our organism varies the *text* tokenizer, not the visual tokenization)" if factor == "tokenizer" else ""
        v, why = _verdict(p)
        row(claim, "stated qualitatively (**confirmed**, abstract)", (why + note) if p else NA, v,
            f"`{p['model']}` vs `{p['reference']}`" if p else "—")
    p = next((x for x in pairs if x.get("factor") == "base LLM"), None)
    v, why = _verdict(p)
    row("Layer allocation shifts with the base LLM", "stated qualitatively (**confirmed**, abstract)", why if p else NA,
        v, f"`{p['model']}` vs `{p['reference']}`" if p else "—")
    p = next((x for x in pairs if x.get("factor") == "LM fine-tuning"), None)
    if p:
        v, why = _verdict(p)
        row("(this book's question, not a claim of paper A) Fine-tuning the LM in stage 2, as LLaVA-1.5 does, leaves "
            "the stages as they are with a frozen LM", "—", why, v, f"`{p['model']}` vs `{p['reference']}`")
    v, why = _verdict(dec)
    row("Output format keeps the reasoning, changes the answer format: the decision is shared across formats, then "
        "the formats part", "stated qualitatively (**confirmed**, abstract); no layer in the reference",
        why if dec else NA, v, f"`{dec['model']}`" if dec else "—")
    return lines


# ---- what chapters 1-4 say and record ---------------------------------------------------------------------------

def stage_evidence(seg, blocks: int) -> list[dict]:
    """Chapter 2's claims with their verdicts (:mod:`.verdicts`) and the numbers each rests on, from an
    :class:`.intervals.IntervalSegmentation`: each stage's presence and position, their order, the lexical drop."""
    layers = list(seg.layers)
    rows = []

    def where(mask):
        return layer_list([l for l, m in zip(layers, mask) if m]) or "none"

    for st in STAGES:
        rows.append({"key": f"presence:{st}", "claim": f"{st}: present", "verdict": V.presence(seg.certain, seg.possible, st),
                     "because": f"signature certain at layer(s) {where(seg.certain[st])}, possible at {where(seg.possible[st])}"})
    for st in STAGES:
        lo, hi = V.REGIONS[st]
        rows.append({"key": f"position:{st}", "claim": f"{st}: at paper A's depth ({lo:.2f}–{hi:.2f} of the blocks)",
                     "verdict": V.position(seg.certain, seg.possible, st, layers, blocks),
                     "because": f"certain at layer(s) {where(seg.certain[st])} of {blocks}"})
    rows.append({"key": "order", "claim": "the four stages in paper A's order", "verdict": V.order(seg.certain, seg.possible, layers),
                 "because": "; ".join(f"{st.split()[0]} {where(seg.certain[st])}" for st in STAGES)})
    lex = seg.drops[(seg.drops.kind == "family") & (seg.drops.unit == "lexical")].sort_values("layer")
    if len(lex):
        top = lex.loc[lex["drop"].idxmax()]
        rows.append({"key": "lexical_drop", "claim": f"the lexical variants drop accuracy by about 40 % (read as ≥ {V.LEXICAL_DROP:.2f})",
                     "verdict": V.lexical_drop(lex.band_lo.to_numpy(), lex.band_hi.to_numpy()),
                     "because": f"largest lexical drop {top['drop']:.2f} at layer {int(top.layer)} (simultaneous band "
                                f"{top.band_lo:.2f}–{top.band_hi:.2f})"})
    return rows


def verdict_paragraph(model: str, rows: list[dict]) -> str:
    """The chapter's closing verdicts in plain words (generated, so a re-run on another model rewrites them)."""
    absent = [r["claim"].split(":")[0] for r in rows if r["key"].startswith("presence:") and r["verdict"] == V.NOT_REPRODUCED]
    certain = [r["claim"].split(":")[0] for r in rows if r["key"].startswith("presence:") and r["verdict"] == V.REPRODUCED]
    head = f"**Verdicts on `{model}`** (rule: methods page). "
    if len(certain) == len(STAGES):
        head += "All four stages appeared. "
    elif absent:
        head += (f"The four stages did not appear on this model: the intervals rule out {', '.join(absent)}"
                 + (f"; {', '.join(certain)} did appear. " if certain else ". "))
    else:
        head += (f"Not all four stages could be established: {', '.join(certain) or 'none'} appeared, the others are "
                 "inconclusive at this n. ")
    return head + "\n\n" + "\n".join(V.sentence(r["claim"], r["verdict"], r["because"]) for r in rows)


def power_note(results, seg) -> str:
    """How much the chapter can resolve: held-out n, the smallest resolvable difference, the bands' width."""
    from ...stats import resolvable_difference

    n = int(results.n_test.iloc[0])
    fam = seg.drops[seg.drops.kind == "family"]
    half = float(((fam.band_hi - fam.band_lo) / 2).median()) if len(fam) else float("nan")
    k = fam.unit.nunique() * len(seg.layers)
    peak = float(results[results.variant == "anchor"].accuracy.max())
    return (f"The probes are scored on **n = {n} held-out images**. At this n two accuracies near the anchor's peak "
            f"({peak:.2f}) are told apart (two-sided 5 %, power 80 %) when they differ by at least "
            f"**{resolvable_difference(n, min(max(peak, 0.05), 0.95)):.3f}**. A layer is called sensitive to a family "
            f"only when the drop's **simultaneous** 95 % band over all {k} layer × family comparisons lies at or above "
            f"drop = {seg.params.drop:.2f}; the bands' median half-width here is {half:.3f}, so a drop is called from "
            f"about {seg.params.drop + half:.2f} upwards, and a layer whose band straddles the threshold stays undecided.")


def resolution_note(n: int, p: float | None = None, *, what: str = "two accuracies") -> str:
    """Held-out n and the smallest difference it resolves (:func:`probekit.stats.resolvable_difference`) near
    accuracy ``p``; without ``p`` at 0.5, where it is largest (so "at most")."""
    from ...stats import resolvable_difference

    at = 0.5 if p is None else min(max(float(p), 0.05), 0.95)
    d = resolvable_difference(int(n), at)
    near = "anywhere (the bound at 0.50, where it is widest)" if p is None else f"near {at:.2f}"
    return (f"Scored on **n = {int(n)} held-out images**: {what} {near} are told apart (two-sided 5 %, power 80 %) "
            f"when they differ by at least **{d:.3f}**.")


def stage_record(run, results, seg, evidence: list[dict]) -> dict:
    """What chapter 2 measured: the interval segmentation's stage ranges, the verdicts, the largest lexical drop,
    the anchor's peak, held-out n."""
    ranges = seg.ranges()
    lex = seg.drops[(seg.drops.kind == "family") & (seg.drops.unit == "lexical")]
    anchor = results[results.variant == "anchor"]
    return {"model": run.model_id, "blocks": int(run.blocks), "n_images": run.n_images, "seed": run.seed,
            "n_test": int(results.n_test.iloc[0]), "data": run.data_label,
            "stages": {k: list(v) if v else None for k, v in ranges.items()},
            "stage_sequence": [k for k, v in ranges.items() if v],
            "lexical_drop_max": float(lex["drop"].max()) if len(lex) else None,
            "lexical_drop_in_stage": bool(ranges["lexical integration"]), "anchor_peak": float(anchor.accuracy.max()),
            "anchor_peak_layer": int(anchor.loc[anchor.accuracy.idxmax(), "layer"]),
            "verdicts": {r["key"]: {"verdict": r["verdict"], "because": r["because"]} for r in evidence},
            "params": {"drop": seg.params.drop, "info": seg.params.info, "alpha": seg.alpha}}


def comparison_record(comp, runs: dict) -> dict:
    """What chapter 4 measured: every model's stages and position verdicts, every pair's verdict, the noise floor."""
    models = {}
    for m, seg in comp.segmentations.items():
        L = comp.blocks[m]
        models[m] = {"blocks": int(L), "stages": {k: list(v) if v else None for k, v in seg.ranges().items()},
                     "verdicts": {f"position:{st}": {"verdict": V.position(seg.certain, seg.possible, st, list(seg.layers), L),
                                                     "because": f"certain at layer(s) {layer_list([l for l, c in zip(seg.layers, seg.certain[st]) if c]) or 'none'} of {L}"}
                                  for st in STAGES}}
    first = next(iter(runs.values()))
    pairs = json.loads(comp.pairs.to_json(orient="records")) if len(comp.pairs) else []
    return {"models": models, "pairs": pairs, "noise": json.loads(comp.noise.to_json(orient="records")),
            "n_images": first.n_images, "seed": first.seed, "data": first.data_label}


def behaviour_note(run, table, paraphrases=None) -> str:
    """One paragraph from :func:`.analysis.decision_behaviour`: how often the model answers correctly, per prompt and
    image domain, and what that means for the probes (paraphrases no organism trained on reported apart)."""
    probe = table
    para = paraphrases if paraphrases is not None else table.iloc[:0]
    worst = probe.sort_values("answered_correctly").iloc[0]
    dtype = run.store.key["model"].get("dtype", "?")
    lines = [f"On the {run.n_images} images ({', '.join(sorted(set(table['image shows'])))}), the model (run in {dtype}; "
             "an organism card's figures are float32, see the methods page on precision) prefers the "
             f"correct answer under every probe prompt on at least **{worst.answered_correctly:.1%}** of the images of "
             f"either domain (lowest: `{worst.variant}` on images showing {worst['image shows']})."]
    low = probe[probe.answered_correctly < 0.95]
    if len(low):
        lines.append("Below the 0.95 goal: " + "; ".join(f"`{r.variant}` on {r['image shows']} ({r.answered_correctly:.1%})"
                                                          for _, r in low.iterrows())
                     + ". Read the probe results for those prompts with care: the probes then describe a model that "
                     "does not solve the task as posed.")
    else:
        lines.append("Every probe prompt is answered correctly on at least 95 % of either domain's images, so the "
                     "probes below describe a model that solves the task.")
    if len(para):
        pw = para.sort_values("answered_correctly").iloc[0]
        lines.append(f"On the paraphrases no organism trained on ({int(pw.n)} images of each domain), the lowest is "
                     f"`{pw.variant}` on images showing {pw['image shows']}: {pw.answered_correctly:.1%}.")
    return " ".join(lines)


def premise_paragraph(run, table, paraphrases=None) -> str:
    """Chapter 1's closing verdict: it decides no claim of paper A, it checks the premise every later chapter needs
    (the model solves the task its probes decode), by :func:`~.verdicts.premise`."""
    word, rows = V.premise(table)
    low = rows[0]
    failing = [f"`{v}` on {d} ({a:.1%}, CI {lo:.3f}–{hi:.3f})" for v, d, a, _, lo, hi in rows if hi < V.PREMISE]
    s = (f"**Verdict on `{run.model_id}`** (rule: methods page). This chapter decides none of paper A's claims; it "
         f"checks their premise — that the model solves the task its probes decode. The premise "
         f"{'is ' if word == 'uncertain' else ''}**{word}**: the lowest "
         f"Wilson 95 % lower bound over the probe prompts and both domains is {low[4]:.3f} (`{low[0]}` on images "
         f"showing {low[1]}, {low[2]:.1%} of {low[3]}), against {V.PREMISE:.2f}.")
    if failing:
        s += " Below it: " + "; ".join(failing) + ". Later chapters' probes describe a model that does not solve these."
    if paraphrases is not None and len(paraphrases):
        pw = paraphrases.sort_values("answered_correctly").iloc[0]
        s += (f" On the paraphrases no organism trained on (not part of the rule), the lowest is `{pw.variant}` on "
              f"images showing {pw['image shows']}: {pw.answered_correctly:.1%} of {int(pw.n)}.")
    return s


def parting_summary(df) -> str:
    """Chapter 3's per-layer decisions in one short list (the full table stays in ``df.table``)."""
    t = df.table
    undecided = t.layer[~t["shared (certain)"] & ~t["formats part (certain)"]]
    return (f"Of {len(t)} layers ({df.n_images} held-out images): the decision is **certainly shared** across formats at "
            f"layer(s) {layer_list(t.layer[t['shared (certain)']]) or 'none'}; the formats **certainly part** at "
            f"{layer_list(t.layer[t['formats part (certain)']]) or 'none'}; undecided at {layer_list(undecided) or 'none'} "
            f"(gap = within-format minus transfer accuracy; threshold drop = {df.params.drop:.2f}, simultaneous bands).")


def _layer_name(x) -> str:
    """A parting layer as written: 'none', or the layer number without a decimal point."""
    try:
        return str(int(x))
    except (TypeError, ValueError):
        return str(x)


def parting_evidence(df) -> dict:
    """Chapter 3's claim (the decision is shared across answer formats, then the formats part) with its verdict."""
    t = df.table
    verdict = V.parting(t["shared (certain)"].to_numpy(), t["shared (possible)"].to_numpy(),
                        t["formats part (certain)"].to_numpy(), t["formats part (possible)"].to_numpy())
    shared = layer_list(t.layer[t["shared (certain)"]]) or "none"
    parted = layer_list(t.layer[t["formats part (certain)"]]) or "none"
    top = df.parting_share.sort_values("share").iloc[-1] if df.parting_share is not None and len(df.parting_share) else None
    because = (f"decision certainly shared at layer(s) {shared}, formats certainly part at {parted}"
               + (f"; parting layer {df.parting_layer}" if df.parting_layer is not None else "; no parting layer")
               + (f" (the most frequent over resampled images: {_layer_name(top['parting layer'])}, {top.share:.0%})"
                  if top is not None else "") + f"; {df.n_images} held-out images")
    return {"verdict": verdict, "because": because}


def parting_note(df, model: str) -> str:
    """Chapter 3's closing paragraph: where the decision is shared, where the formats part, and the verdict."""
    ev = parting_evidence(df)
    return (f"Per held-out image (n = {df.n_images}; each image's four prompts move together in the resampling) the "
            f"gap between within-format and transfer accuracy gets a simultaneous band over the layers; a layer is "
            f"shared when the band lies below drop = {df.params.drop:.2f} and both are decodable, parted when it lies at "
            f"or above it.\n\n**Verdict on `{model}`** (rule: methods page): the decision is shared across formats, "
            f"then the formats part — **{ev['verdict']}**: {ev['because']}.")


def parting_record(run, df) -> dict:
    """What chapter 3 measured, for the status page."""
    t = df.table
    return {"model": run.model_id, "parting_layer": df.parting_layer, "blocks": int(run.blocks),
            "shared_layers": t.layer[t["shared (certain)"]].tolist(),
            "parted_layers": t.layer[t["formats part (certain)"]].tolist(), "n_images": run.n_images,
            "n_test": df.n_images, "seed": run.seed, "data": run.data_label, **parting_evidence(df)}


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
    """Chapter 4's verdicts in plain words: the noise floor, then every pair against it."""
    if comp.pairs.empty:
        return ("None of these models is a controlled variant of another, so this page compares them side by side "
                "only; pass the organism family (the default `model_ids`) for the controlled comparisons.")
    floor = comp.pairs["noise floor"].iloc[0]
    if len(comp.noise):
        seeds = ", ".join(f"`{r.model}` vs `{r.reference}` {r.D:.3f}" for r in comp.noise.itertuples())
        head = (f"**Noise floor**: the anchor curves of organisms that differ only in their training seed differ by "
                f"D = {seeds}; the floor is the largest, **{floor:.3f}**. A factor is called an effect only when a pair "
                "differs by more (rule: methods page).")
    else:
        head = ("**No noise floor**: no seed replicates among these models, so no factor can be called an effect or "
                "its absence: the stability verdicts are inconclusive.")
    parts = [f"- **{r.factor}** (`{r.model}` vs `{r.reference}`{'' if r.controlled else ', not controlled'}): "
             f"**{r.verdict}** — {r.because}." for r in comp.pairs.itertuples()]
    return head + "\n\n" + "\n".join(parts)


