"""Device data sheets: what plans and benchmarks compare a measurement with.

`GPUS` maps a GPU model to its dense bf16 tensor-core FLOP/s, memory bandwidth (bytes/s) and memory
(GB), from the vendors' data sheets. Names are matched most specific first ("H100 PCIe" before "H100").
"""

from __future__ import annotations

from dataclasses import dataclass

from repro.errors import UserError


@dataclass(frozen=True)
class GPU:
    flops: float  # dense bf16 tensor-core FLOP/s
    bandwidth: float  # memory bandwidth, bytes/s
    memory_gb: float


GPUS = {
    "H100 PCIe": GPU(756e12, 2.0e12, 80),
    "H100 NVL": GPU(835e12, 3.9e12, 94),
    "H100": GPU(989e12, 3.35e12, 80),  # SXM
    "H200": GPU(989e12, 4.8e12, 141),
    "A100": GPU(312e12, 2.0e12, 80),  # 80 GB SXM
    "L40S": GPU(362e12, 0.864e12, 48),
}


def gpu(model: str) -> GPU:
    """The data sheet of a GPU model named exactly (any case), or one sentence listing the known ones."""
    key = next((k for k in GPUS if k.lower() == model.lower()), None)
    if key is None:
        raise UserError(f"--gpu {model}: unknown GPU model; choose one of {', '.join(GPUS)}.")
    return GPUS[key]


def detect(device_name: str) -> GPU | None:
    """The data sheet of the GPU whose model name appears in `device_name` (torch's device name)."""
    return next((spec for key, spec in GPUS.items() if key in device_name), None)
