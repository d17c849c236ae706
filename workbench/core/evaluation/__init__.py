"""Evaluation: perplexity, BLEU / chrF / TER, multiple choice and sentence pairs, classification, generate-then-score, the sampling sweep and the results history."""
