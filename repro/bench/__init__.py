"""Benchmarks (`repro bench NAME`): ratios against a baseline measured in the same run, registered
runnables with run directories like every experiment, so `repro report --all` rebuilds their tables.

- `train.py`, `decode.py`: training and decoding tokens/s of each Memory Mosaic against its baseline
  at equal parameters (`bench train`, `bench decode`; `pairs.py` builds the pairs and the rows,
  `ops.py` counts the operators of a step); `train.model_speeds` also times mmv2-pretrain's speed rows;
- `images.py`: images/s of the rich-features ResNet training step against its forward+backward floor
  (`bench images`);
- `kernels.py`: each kernel backend against the reference first, then time, peak memory and the
  fraction of the GPU's peak (`bench kernels`);
- `eval.py`: an evaluation's cost (a RULER sample, ICL label scoring) against the model's bare forward
  over the same tokens (`bench eval`);
- `gpu_check.py`: everything GPU-specific in one short command (`bench gpu-check`, `make gpu-check`).

Each benchmark's rows are its table (`repro.results.table_rows`), with the config and the machine's
state (load average, threads) beside it. Commands, not timed tests.
"""
