import numpy as np
import pytest
import torch
from conftest import FAMILIES, TEXT_LAYERS

from probekit.errors import ProbekitError
from probekit.extract.kv import image_kv
from probekit.prompts import messages_for, template


@pytest.mark.parametrize("family", FAMILIES)
def test_image_keys_values_shapes_and_causality(family, tiny_models, fashion):
    lm = tiny_models[family]
    img = fashion[0][0]
    tc = lm.text_config
    width = tc.num_key_value_heads * (getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads)
    n_img = int((lm.processor(text=[template(lm, "Q?")], images=[img], return_tensors="pt")["input_ids"]
                 == lm.image_token_id).sum())
    a, b = image_kv(lm, [template(lm, "Does this image show an animal?"),
                         template(lm, "What is in this image? Answer in one word please.")], [img, img])
    assert a["values"].shape == (TEXT_LAYERS, n_img, width) and a["keys"].shape == a["values"].shape
    # only the text after the image changed: image keys and values are the same (causal attention)
    torch.testing.assert_close(a["values"], b["values"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["keys"], b["keys"], atol=1e-5, rtol=0)
    # a text prefix before the image changes them (from the first layer's values on); a system message
    # puts text before the image in every family's template (llava's template writes images first in a turn)
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Look closely."}]}] + \
        messages_for("Does this image show an animal?")
    prefixed = lm.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert prefixed.index("Look closely.") < prefixed.index(lm.processor.image_token)
    (c,) = image_kv(lm, [prefixed], [img])
    assert not torch.allclose(c["values"][-1], a["values"][-1], atol=1e-4)
    # a different image changes them
    (d,) = image_kv(lm, [template(lm, "Does this image show an animal?")], [fashion[5][0]])
    assert not torch.allclose(d["values"][0], a["values"][0], atol=1e-4)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_text_prefix_lands_before_the_image(family, tiny_models):
    lm = tiny_models[family]
    out = template(lm, "Does this image show an animal?", prefix="Look closely.")
    assert out.index("Look closely.") < out.index(lm.processor.image_token) < out.index("Does this image show")


# ---- every quantity at the image tokens; blocking; text queries; the store --------------------------------------

PROMPTS = ("Does this image show an animal?", "What is in this image? Answer in one word please.")


def projector_of(lm, vision: torch.Tensor) -> torch.Tensor:
    """The model's own projector applied to image_states' vision tokens (Qwen: the merger's MLP after its norm,
    on the m x m patch states of each token)."""
    proj = lm.adapter.projector(lm.model)
    with torch.no_grad():
        if lm.adapter.family.startswith("qwen"):
            m = lm.model.config.vision_config.spatial_merge_size
            d = vision.shape[1] // (m * m)
            return proj.mlp(proj.ln_q(vision.reshape(-1, d)).reshape(-1, m * m * d))
        return proj(vision)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_states_shapes_causality_and_alignment(family, tiny_models, fashion):
    from probekit.extract.kv import image_states, token_grid

    lm = tiny_models[family]
    tc = lm.text_config
    width = tc.num_key_value_heads * (getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads)
    imgs = [fashion[0][0], fashion[5][0]]
    a = image_states(lm, [template(lm, PROMPTS[0])] * 2, imgs)
    b = image_states(lm, [template(lm, PROMPTS[1])] * 2, imgs)
    T = a[0]["keys"].shape[1]
    assert a[0]["keys"].shape == a[0]["values"].shape == (TEXT_LAYERS, T, width)
    assert a[0]["hidden"].shape == (TEXT_LAYERS + 1, T, lm.hidden_size) and a[0]["vision"].shape[0] == T
    for x, y in zip(a, b):  # only the text after the image changed: every image quantity is the same
        for k in ("keys", "values", "hidden", "vision"):
            torch.testing.assert_close(x[k], y[k], atol=1e-5, rtol=0, equal_nan=True)
    # the vision tokens are what the projector turned into the LM's input at each image token (hidden layer 0)
    for x in a:
        ok = ~torch.isnan(x["vision"]).any(1)
        assert ok.sum() >= T - 8  # llava-next: only its row-end newline tokens have no vision token
        torch.testing.assert_close(projector_of(lm, x["vision"][ok]), x["hidden"][0][ok], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0]["values"], a[1]["values"], atol=1e-4)  # another image, other values
    (rows, cols), cells = token_grid(lm, imgs[0])
    assert len(cells) == T and sorted(cells[cells >= 0].tolist()) == list(range(rows * cols))
    want = {"llava": (4, 4), "llava_next": (4, 4), "qwen2_vl": (2, 2), "qwen2_5_vl": (2, 2)}[family]
    assert (rows, cols) == want
    if family == "llava_next":  # the base view comes first; the high-resolution tile and newlines have no cell
        assert cells[:16].tolist() == list(range(16)) and (cells[16:] == -1).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_blocked_attention_changes_only_what_comes_after(family, tiny_models, fashion):
    from probekit.extract.kv import image_states

    lm = tiny_models[family]
    p = template(lm, PROMPTS[0])
    img = [fashion[0][0]]
    (a,) = image_states(lm, [p], img)
    T = a["keys"].shape[1]
    j = 1 if T <= 4 else 5
    (b,) = image_states(lm, [p], img, block={2: [j]})
    # tokens up to the blocked one never attend to it afterwards: unchanged at every layer
    torch.testing.assert_close(b["hidden"][:, : j + 1], a["hidden"][:, : j + 1], atol=1e-6, rtol=0)
    torch.testing.assert_close(b["values"][:, : j + 1], a["values"][:, : j + 1], atol=1e-6, rtol=0)
    # later tokens: the same until block 2 runs (values of blocks 1-2 come from its input), changed after it
    torch.testing.assert_close(b["hidden"][:2], a["hidden"][:2], atol=1e-6, rtol=0)
    torch.testing.assert_close(b["values"][:2], a["values"][:2], atol=1e-6, rtol=0)
    assert (b["hidden"][2, j + 1:] - a["hidden"][2, j + 1:]).abs().max() > 1e-4
    assert (b["values"][2, j + 1:] - a["values"][2, j + 1:]).abs().max() > 1e-4


def test_blocking_is_the_same_with_eager_attention_and_refuses_bad_input(tiny_dirs, fashion):
    from probekit.errors import ProbekitError
    from probekit.extract.kv import image_states
    from probekit.models import load_model

    lm = load_model(str(tiny_dirs["llava"]), dtype="float32", device="cpu")
    p = template(lm, PROMPTS[0])
    img = [fashion[0][0]]
    (sdpa,) = image_states(lm, [p], img, block={1: [3], 3: [0, 7]})
    lm.model.set_attn_implementation("eager")  # an additive float mask instead of sdpa's boolean one
    (eager,) = image_states(lm, [p], img, block={1: [3], 3: [0, 7]})
    (free,) = image_states(lm, [p], img)
    torch.testing.assert_close(eager["hidden"], sdpa["hidden"], atol=1e-5, rtol=1e-5)
    assert (free["hidden"][-1] - eager["hidden"][-1]).abs().max() > 1e-4
    with pytest.raises(ProbekitError, match="out of range 0..15"):
        image_states(lm, [p], img, block={1: [16]})
    with pytest.raises(ProbekitError, match="layers 1..3"):
        image_states(lm, [p], img, block={4: [0]})


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_text_states_read_each_texts_last_token(family, tiny_models):
    from probekit.extract.kv import text_states

    lm = tiny_models[family]
    both = text_states(lm, ["a bag", "an ankle boot"])
    one = text_states(lm, ["a bag"])
    assert both["values"].shape == (2, TEXT_LAYERS, one["values"].shape[-1])
    assert both["hidden"].shape == (2, TEXT_LAYERS + 1, lm.hidden_size)
    for k in ("keys", "values", "hidden"):  # right padding does not move the short text's last token
        np.testing.assert_allclose(both[k][:1], one[k], atol=1e-5)
    assert not np.allclose(both["values"][0], both["values"][1], atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_image_tokens_store_round_trip_cache_and_resume(family, tiny_models, fashion, tmp_path):
    from probekit.extract.kv import extract_image_tokens, image_states
    from probekit.store import ActivationStore

    lm = tiny_models[family]
    imgs = [fashion[i][0] for i in range(5)]
    store = extract_image_tokens(lm, imgs, tmp_path / "s", labels=[fashion[i][1] for i in range(5)],
                                 classes=fashion.classes, batch_size=2, shard_size=2, layers=[1, 3])
    ref = image_states(lm, [template(lm, "What is in this image?")] * 5, imgs)
    again = ActivationStore.open(tmp_path / "s")
    assert set(again.quantities) == {"keys", "values", "hidden", "vision"} and again.extra["layers"] == [1, 3]
    for i, r in enumerate(ref):
        np.testing.assert_allclose(again.array("keys")[i], r["keys"][[0, 2]].numpy(), atol=1e-5)
        np.testing.assert_allclose(again.array("values", 1)[i], r["values"][2].numpy(), atol=1e-5)
        np.testing.assert_allclose(again.array("hidden")[i], r["hidden"][[0, 1, 3]].numpy(), atol=1e-5)
        np.testing.assert_allclose(again.array("vision")[i], r["vision"].numpy(), atol=1e-5)
    assert len(again.extra["cells"]) == ref[0]["keys"].shape[1]
    # complete: returned without running the model; a lost shard is the only one recomputed
    mtimes = {p: p.stat().st_mtime_ns for p in again.root.glob("shard-*")}
    extract_image_tokens(lm, imgs, tmp_path / "s", labels=[fashion[i][1] for i in range(5)], classes=fashion.classes,
                         batch_size=2, shard_size=2, layers=[1, 3])
    assert {p: p.stat().st_mtime_ns for p in again.root.glob("shard-*")} == mtimes
    store.shard_path(1).unlink()
    extract_image_tokens(lm, imgs, tmp_path / "s", labels=[fashion[i][1] for i in range(5)], classes=fashion.classes,
                         batch_size=2, shard_size=2, layers=[1, 3])
    after = {p: p.stat().st_mtime_ns for p in again.root.glob("shard-*")}
    assert {p: t for p, t in after.items() if p.name != "shard-00001.safetensors"} == \
        {p: t for p, t in mtimes.items() if p.name != "shard-00001.safetensors"}
    np.testing.assert_allclose(again.array("keys")[2], ref[2]["keys"][[0, 2]].numpy(), atol=1e-5)


def test_extract_image_tokens_refuses_mixing_and_mixed_sizes(tiny_models, fashion, tmp_path):
    from PIL import Image

    from probekit.errors import DataError, StoreError
    from probekit.extract.kv import extract_image_tokens

    lm = tiny_models["llava"]
    imgs = [fashion[i][0] for i in range(3)]
    extract_image_tokens(lm, imgs, tmp_path / "s")
    with pytest.raises(StoreError, match="block"):  # another block is another key: never mixed into this store
        extract_image_tokens(lm, imgs, tmp_path / "s", block={2: [0]})
    with pytest.raises(StoreError, match="images"):
        extract_image_tokens(lm, imgs[:2] + [fashion[7][0]], tmp_path / "s")
    wide = Image.new("RGB", (56, 28))  # llava-next tiles a wide image: more image tokens than a square one
    with pytest.raises(DataError, match="resize all images to one size"):
        extract_image_tokens(tiny_models["llava_next"], [fashion[0][0], wide], tmp_path / "n")
    with pytest.raises(ProbekitError, match="layers"):
        extract_image_tokens(lm, imgs, tmp_path / "l", layers=[0, 1])


def test_stores_are_found_from_the_identity_alone(tiny_dirs, tiny_models, fashion, tmp_path):
    """extract_queries holds the text side and what a reader needs of the model; find_image_tokens / find_queries
    find complete stores from identify()'s identity (no model), and nothing written for other arguments."""
    from probekit.extract.kv import (
        causality_check,
        extract_image_tokens,
        extract_queries,
        find_image_tokens,
        find_queries,
        text_states,
        token_grid,
    )
    from probekit.models import identify

    lm = tiny_models["llava"]
    ident = identify(str(tiny_dirs["llava"]), dtype="float32", device="cpu")
    assert ident == lm.identity()
    imgs = [fashion[i][0] for i in range(3)]
    texts = ["a bag", "an ankle boot"]
    q = extract_queries(lm, texts, tmp_path / "q", images=imgs, prompt="What?", check_prompt="Why?")
    ref = text_states(lm, texts)
    for k in ("keys", "values", "hidden"):
        np.testing.assert_array_equal(q.array(k), ref[k])
    grid, cells = token_grid(lm, imgs[0])
    e = q.extra
    assert e["grid"] == list(grid) and e["cells"] == cells.tolist() and e["num_layers"] == TEXT_LAYERS
    assert e["image_size"] == [imgs[0].size[1], imgs[0].size[0]] and e["texts"] == texts
    assert e["kv_heads"] * e["head_dim"] == ref["keys"].shape[-1]
    assert e["causality"] == causality_check(lm, imgs, "What?", "Why?") and e["causality"]["values"] < 1e-5

    def found(**kw):
        return find_queries(tmp_path / "q", **{"identity": ident, "texts": texts, "images": imgs, "prompt": "What?",
                                               "check_prompt": "Why?", **kw})

    assert found() is not None and found(images=None) is not None
    assert found(texts=["a bag"]) is None and found(prompt="Who?") is None and found(images=imgs[:2]) is None
    assert found(identity={**ident, "dtype": "bfloat16"}) is None

    extract_image_tokens(lm, imgs, tmp_path / "s", prefix="Look.", layers=[1, 3])

    def look(**kw):
        return find_image_tokens(tmp_path / "s", **{"identity": ident, "images": imgs, "prefix": "Look.",
                                                    "layers": [1, 3], **kw})

    assert look() is not None and look(prefix=None) is None and look(layers=[1, 2]) is None
    assert look(block={2: [0]}) is None and look(images=imgs[::-1]) is None
    assert find_image_tokens(tmp_path / "nothing", ident, imgs, layers=[1]) is None
