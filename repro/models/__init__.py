"""Model families: associative memory (shared), Memory Mosaics, transformers, ResNets.

Importing this package registers every language-model family with `repro.models.registry` (each
model file calls `register_model` when imported); the registry itself imports no model file.
"""

from repro.models import mosaic, mosaic_v2, transformer  # noqa: F401  (register the LM families)
