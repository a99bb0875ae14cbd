"""The book: what every chapter shares and how the book is built.

- :mod:`.context`: a chapter run's caption, records for the status page, the parameters table, quiet model
  loading, cache paths;
- :mod:`.plots`: probekit's offline altair renderer, captions, inline images; :mod:`.widgets`: the explorer;
- :mod:`.params`: one clear error for a mistyped notebook parameter;
- :mod:`.status`: the reproduction-status page from the chapters' records (each paper's rows come from its
  ``claims`` module);
- :mod:`.build`: papermill runs every chapter notebook, jupyter-book renders them (``probekit book``).
"""
