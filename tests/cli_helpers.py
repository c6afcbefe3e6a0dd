"""Run a runnable the way its command does (`repro.cli.launch`), with options as keyword arguments:
`launch("harness", "evaluation", model=CKPT, tasks="toy_mc", batch_size=4, out=..., reports=...)`. A
keyword that is not a common option is the runnable's promoted option (`batch_size` -> `--batch-size`);
None and False leave it out, True passes a switch."""

from pathlib import Path
from typing import Any

from repro import cli

COMMON = {"preset", "overrides", "seed", "out", "device", "data_dir", "force", "wandb", "reports"}


def launch(name: str, kind: str, model: str | None = None, **kw: Any) -> Path:
    common = {k: v for k, v in kw.items() if k in COMMON}
    options = {}
    for key, value in kw.items():
        if key in COMMON or value is None or value is False:
            continue
        options["--" + key.replace("_", "-")] = True if value is True else str(value)
    (run_dir,) = cli.launch(name, kind, [model] if model is not None else None, options, **common)
    return run_dir
