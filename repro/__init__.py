"""repro: reproduce the experiments of 'AI for the Open-World: the Learning Principles'."""

__version__ = "0.1.0"
