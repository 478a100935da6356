"""Dataset sources, per-image conversion, atomic writers and the training-time loader."""
