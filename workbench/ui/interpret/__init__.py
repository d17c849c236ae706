"""The Attention tab (attention views, logit lens, attribution)."""
