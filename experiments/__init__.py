"""One module per paper result; each registers its experiment(s) with `repro.registry.register`."""
