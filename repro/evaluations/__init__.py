"""Evaluations of any model (`repro eval NAME --model M`): one module per evaluation registering it,
plus its report module. The shared tooling they use (models, scoring, lm-eval) is `repro.eval`."""
