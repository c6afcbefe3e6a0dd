"""Model families: associative memory (shared), Memory Mosaics, transformers, ResNets."""
