"""Paper A (Yu & Lee, arXiv 2508.20279): one linear probe per layer on the last prompt token, trained on the anchor
question and frozen, re-scored under lexical, semantic-negation and output-format variants; the accuracy drops
locate stages (visual grounding, lexical integration, semantic reasoning, answer decoding). Chapters 1-4.

:mod:`.stages` segments per-layer results into stages; :mod:`.analysis`, :mod:`.charts`, :mod:`.claims`,
:mod:`.chapter` as in every paper folder (see :mod:`probekit.papers`).
"""
