"""Paper B (arXiv 2510.04819): the image tokens' keys and values in the language model's cache carry enough to
segment and match zero-shot; input-agnostic late keys are artifacts; a text prefix helps. Chapter 5."""
