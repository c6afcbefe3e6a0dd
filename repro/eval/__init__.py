"""Evaluations that use only the LM interface: per-position loss, generation, lm-eval adapter."""
