"""Paper C (arXiv 2504.21447): layer-wise representation similarity groups the vision encoder's layers into shallow,
middle and deep; shallow/middle beat deep on counting and position, deep wins OCR-like tasks; fusing wins.
Chapter 6; :mod:`.tasks` builds its real-image tasks."""
