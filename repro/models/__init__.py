"""Model families: GPT-2, Llama, Memory Mosaics v1 and v2 (language models), the three-moons memory,
ResNets; shared layers (`layers`) and the shared associative memory (`memory`).

Importing this package registers every family with `repro.models.registry` (each model file calls
`register_model` when imported); the registry itself imports no model file. Language models also
load from checkpoints (`registry.load`).
"""

from repro.models import gpt2, llama, moon_memory, mosaic, mosaic_v2, resnet  # noqa: F401  (register the families)
