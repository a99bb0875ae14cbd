import pytest
import torch

from conftest import FAMILIES, TEXT_LAYERS
from probekit.extract import template
from probekit.kv import image_kv
from probekit.prompts import messages_for


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
