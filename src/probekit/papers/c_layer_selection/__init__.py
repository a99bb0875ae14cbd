"""c_layer_selection."""
