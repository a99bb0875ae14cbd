"""The three papers, one folder each; every folder holds the same four kinds of module:

- ``analysis``: what is computed, from stores and arrays only (no model is run here);
- ``charts``: the altair charts of its chapter;
- ``claims``: what its chapter says and records (notes, record payloads, rows of the status page);
- ``chapter``: the glue its notebook calls (parameters, finding or extracting its store, the run object).

:mod:`.a_stages` — paper A (arXiv 2508.20279): frozen per-layer probes under prompt variants, four stages;
:mod:`.b_visual_tokens` — paper B (arXiv 2510.04819): image keys/values in the LM's cache;
:mod:`.c_layer_selection` — paper C (arXiv 2504.21447): vision-layer similarity groups, task probes, fusion.
"""
