"""Interpretability: attention, the logit lens and input attribution."""
