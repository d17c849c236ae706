"""Generation: the decoding settings, the samplers, the loop around transformers' generate with its per-step records, comparisons and saved sessions."""
