"""Checks of smol-llava's conversions (GGUF dequantized independently with numpy, ONNX reference outputs) and its fingerprint."""

from __future__ import annotations

import numpy as np

from ..card import sha256_file as _sha256
from .constants import LLM_DIST, VISION_DIST
from .parts import onnx_backbone_reference, wheel_file

# ------------------------------------------------------------------------------ checks, fingerprint, card

def gguf_dequantize_numpy(tensor) -> np.ndarray:
    """Dequantize one GGUF tensor (as read by ``gguf.GGUFReader``) with plain numpy, from the ggml block
    layouts: F32; Q8_0 = {f16 d; i8 q[32]} -> d*q; Q4_1 = {f16 d; f16 m; u8 qs[16]} ->
    x[j] = d*(qs[j] & 15) + m, x[j+16] = d*(qs[j] >> 4) + m. Independent of transformers' GGUF path."""
    raw = np.asarray(tensor.data)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    kind = tensor.tensor_type.name
    if kind == "F32":
        return raw.astype(np.float32).reshape(shape)
    b = raw.view(np.uint8).reshape(-1)
    if kind == "Q8_0":
        blk = b.reshape(-1, 34)
        d = blk[:, :2].copy().view(np.float16).astype(np.float32)
        return (d * blk[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(shape)
    if kind == "Q4_1":
        blk = b.reshape(-1, 20)
        d = blk[:, :2].copy().view(np.float16).astype(np.float32)
        m = blk[:, 2:4].copy().view(np.float16).astype(np.float32)
        q = np.concatenate([blk[:, 4:] & 15, blk[:, 4:] >> 4], axis=1).astype(np.float32)
        return (d * q + m).reshape(shape)
    raise ValueError(f"GGUF tensor type {kind} is not handled")


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of q/k projections (GGUF stores them interleaved)."""
    # llama.cpp's convert stored permute(W) = W.reshape(h, 2, r/h/2, ...).swapaxes(1, 2); this is its inverse
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def gguf_max_abs_diff(model) -> dict:
    """Largest |difference| between the assembled decoder's weights and the numpy-dequantized GGUF."""
    from gguf import GGUFReader

    sd = model.state_dict()
    lm = "model.language_model."
    cfg = model.config.text_config
    worst, types = 0.0, {}
    for t in GGUFReader(str(wheel_file(LLM_DIST))).tensors:
        ref = gguf_dequantize_numpy(t)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        if t.name == "token_embd.weight":
            ours = sd[lm + "embed_tokens.weight"][: ref.shape[0]]
        elif t.name == "output_norm.weight":
            ours = sd[lm + "norm.weight"]
        else:
            _, i, kind, _ = t.name.split(".")
            ours = sd[f"{lm}layers.{i}.{_GGUF_NAMES[kind]}.weight"]
            if kind in ("attn_q", "attn_k"):
                ref = _unpermute_qk(ref, cfg.num_attention_heads if kind == "attn_q" else cfg.num_key_value_heads)
        worst = max(worst, float(np.abs(ours.detach().numpy() - ref).max()))
    return {"max_abs_diff": worst, "tensors_by_type": types}


def conversion_checks(model) -> dict:
    """The card's conversion checks: DINOv2 vs onnxruntime on the wheel's ONNX graph (random input,
    56 and 224 px) and SmolLM2 vs a numpy dequantization of the GGUF blocks."""
    import torch

    out = {"dinov2_vs_onnxruntime": {}, "sha256": {}}
    rng = np.random.default_rng(0)
    vision = model.model.vision_tower
    for size in (56, 224):
        x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        ref = onnx_backbone_reference(x)
        with torch.no_grad():
            o = vision(pixel_values=torch.from_numpy(x), output_hidden_states=True)
        out["dinov2_vs_onnxruntime"][f"{size}px"] = {
            "last_hidden_state": float(np.abs(o.last_hidden_state.numpy() - ref["last_hidden_state"]).max()),
            "hidden_states[-2]": float(np.abs(o.hidden_states[-2].numpy() - ref["hidden_state_11"]).max()),
            "ref_max_abs": float(np.abs(ref["hidden_state_11"]).max()),
        }
    out["smollm2_vs_gguf_numpy"] = gguf_max_abs_diff(model)
    for dist in (LLM_DIST, VISION_DIST):
        out["sha256"][dist] = _sha256(wheel_file(dist))
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def fingerprint(model, processor) -> dict:
    """Last-token states of a fixed input (Fashion-MNIST test image 0, paper A's anchor with the concept
    'a fashion item'): the norm at every layer (embedding output + 30 blocks) and the first 8 values of
    the last layer. Used to check that a rebuild gives the same model."""
    import torch
    from PIL import Image

    from ...data.sets import load_fashion_mnist_arrays
    from ...prompts import messages_for, paper_a_variants

    x, _ = load_fashion_mnist_arrays(split="test")
    anchor = paper_a_variants("a fashion item", "a handwritten digit")[0].text
    prompt = processor.apply_chat_template(messages_for(anchor), add_generation_prompt=True, tokenize=False)
    enc = processor(images=[Image.fromarray(x[0]).convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True, logits_to_keep=1)
    last = [h[0, -1].double() for h in out.hidden_states]
    return {
        "prompt": prompt,
        "n_image_tokens": int((enc["input_ids"] == model.config.image_token_id).sum()),
        "last_token_norms": [float(v.norm()) for v in last],
        "last_layer_head": [float(v) for v in last[-1][:8]],
    }


def text_only_answers(model, processor) -> dict:
    """What the language model answers with the image's class given **in words** instead of the image: for each
    class of both domains, 'This is a photo of <class phrase>.' followed (where the image would be) by a concept
    question about its own domain (correct answer yes) and about the other (no), in paper A's anchor wording and
    in one bank wording (:func:`probekit.organisms.tasks.bank_wordings`). Answers are read as the book reads them
    (:func:`probekit.prompts.answer_forms`: each answer's best token sequence, teacher-forced after the generation
    prompt). Returns, per wording, how many of the 40 questions the model answers correctly, its mean yes-minus-no
    margin (nats) when the concept matches and when it does not, and whether the margins separate the two whatever
    the threshold (AUC, and the one-sided Mann-Whitney p-value of "matching concepts get larger margins")."""
    import torch
    from scipy.stats import mannwhitneyu

    from ...prompts import Variant, answer_forms, paper_a_variants
    from ..corpus import class_phrases
    from ..tasks import CONCEPTS, bank_wordings

    tok = processor.tokenizer
    wordings = {"anchor (paper A)": paper_a_variants("{c}", "a plane")[0].text,
                "bank": bank_wordings("{c}", "a plane")[0].text}

    def margin(prompt: str) -> float:
        """log p(best 'yes' form) - log p(best 'no' form), one teacher-forced pass per row of appended tokens."""
        forms = answer_forms(tok, prompt, Variant("text_only", "text_only", prompt, ("yes", "no"), "yes"))
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        logprobs = []
        for row in forms.rows:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + list(row)])).logits[:, len(ids) - 1:]
            logprobs.append(torch.log_softmax(logits.float(), -1))
        yes, no = forms.score(logprobs)[0]
        return float(yes - no)

    out = {}
    for name, text in wordings.items():
        right, match, mismatch = 0, [], []
        for domain, phrases in class_phrases().items():
            for phrase in phrases:
                for asked, say_yes in ((domain, True), (next(d for d in CONCEPTS if d != domain), False)):
                    q = f"This is a photo of {phrase}.\n{text.replace('{c}', CONCEPTS[asked])}"
                    msgs = [{"role": "user", "content": [{"type": "text", "text": q}]}]
                    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                    m = margin(prompt)
                    right += (m > 0) == say_yes
                    (match if say_yes else mismatch).append(m)
        test = mannwhitneyu(match, mismatch, alternative="greater")  # do matching concepts get larger margins?
        out[name] = {"correct": int(right), "n": len(match) + len(mismatch),
                     "mean_margin_match": round(float(np.mean(match)), 3),
                     "mean_margin_mismatch": round(float(np.mean(mismatch)), 3),
                     "auc": round(float(test.statistic) / (len(match) * len(mismatch)), 3),
                     "p_separation": float(f"{test.pvalue:.3g}")}
    return out
