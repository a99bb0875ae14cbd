"""Helpers the tests share that run a model directly (references for what probekit computes)."""

import torch


def brute_force_logprob(lm, prompt, image, forms) -> float:
    """max over forms of sum_j log p(f_j | prompt, f_<j), one full forward per form (no cache, no batching)."""
    best = -float("inf")
    for f in forms:
        enc = lm.processor(text=[prompt], images=[image], return_tensors="pt")
        ids = torch.cat([enc["input_ids"], torch.tensor([f])], 1)
        inputs = {**enc, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        for k in ("mm_token_type_ids", "token_type_ids"):
            if k in enc:
                inputs[k] = torch.cat([enc[k], torch.zeros(1, len(f), dtype=enc[k].dtype)], 1)
        with torch.no_grad():
            logits = lm.model(**inputs).logits[0].float()
        n = enc["input_ids"].shape[1]
        lp = torch.log_softmax(logits[n - 1 : n - 1 + len(f)], -1)
        best = max(best, float(sum(lp[j, t] for j, t in enumerate(f))))
    return best
