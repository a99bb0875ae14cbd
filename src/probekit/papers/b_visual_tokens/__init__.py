"""b_visual_tokens."""
