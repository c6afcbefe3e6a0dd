"""Result rows, their collection into pandas, and the paper-vs-ours report pieces."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from repro import files
from repro.errors import UserError

# A tidy row: one number, and everything needed to know what it is.
ROW_FIELDS = ("experiment", "preset", "variant", "model", "seed", "split", "metric", "value", "step")
OPTIONAL_FIELDS = ("slice_key", "slice_value")
PRESET_ORDER = ("paper", "cpu", "smoke")  # a report uses the largest scale that has runs


def make_row(**fields: Any) -> dict[str, Any]:
    missing = [k for k in ROW_FIELDS if k not in fields]
    extra = set(fields) - set(ROW_FIELDS) - set(OPTIONAL_FIELDS)
    if missing or extra:
        raise ValueError(f"bad result row: missing {missing}, unexpected {sorted(extra)}")
    row = {k: fields[k] for k in ROW_FIELDS}
    row["value"] = float(row["value"])
    for k in OPTIONAL_FIELDS:
        if k in fields:
            row[k] = fields[k]
    return row


DONE_FILE = "done.json"  # written after rows.jsonl: how many rows the run declared, and their sha256


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Atomic (rows.jsonl exists only for finished runs) and strict JSON: a non-finite value is null.
    Then `done.json` records the row count and the file's sha256, so a rows.jsonl cut short or
    altered afterwards is not taken for a finished run."""
    files.write_jsonl(path, rows)
    files.write_json(path.with_name(DONE_FILE), {"rows": len(rows), "sha256": _sha256(path.read_bytes())})


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def finished_rows(path: Path) -> list[dict[str, Any]] | None:
    """The rows of a finished run from its rows.jsonl, or None: absent, or not what its done.json
    declares (cut short, altered). A run directory from before done.json existed counts as finished
    when its rows.jsonl ends with a whole line."""
    if not path.exists():
        return None
    data = path.read_bytes()
    done_path = path.with_name(DONE_FILE)
    if done_path.exists():
        try:
            done = json.loads(done_path.read_text())
        except ValueError:
            return None
        if not isinstance(done, dict) or done.get("sha256") != _sha256(data):
            return None
    elif data and not data.endswith(b"\n"):
        return None
    rows = files.read_jsonl(path)
    return rows if not done_path.exists() or len(rows) == done.get("rows") else None


def collect(runs: Path, experiment: str | None = None) -> pd.DataFrame:
    """All finished runs under `runs` (optionally one experiment) as one DataFrame; a run directory
    whose rows.jsonl does not match its done.json is left out, with a warning."""
    pattern = f"{experiment or '*'}/*/*/s*/rows.jsonl"
    frames = []
    for path in sorted(runs.glob(pattern)):
        rows = finished_rows(path)
        if rows is None:
            from repro.track import console

            console.print(
                f"[yellow]warning[/]: {path} does not match its {DONE_FILE} (cut short or altered): left out of "
                "the report; rerun that run to finish it again."
            )
            continue
        frames.append(pd.DataFrame(rows))
    if not frames:
        return pd.DataFrame(columns=[*ROW_FIELDS, *OPTIONAL_FIELDS])
    return pd.concat(frames, ignore_index=True)


def write_report(runnable: Any, runs: Path, reports: Path | None, preset: str) -> list[Path]:
    """An evaluation's or benchmark's report right after its run: from every finished run of `preset`
    under RUNS, into REPORTS/NAME/. Without --reports: reports/ for the default runs/ root, RUNS/reports/
    for any other (a scratch `--out /tmp/x` never rewrites the committed tables)."""
    if reports is None:
        reports = Path("reports") if runs == Path("runs") else runs / "reports"
    df = collect(runs, runnable.name)
    return runnable.report(df[df.preset == preset].reset_index(drop=True), reports / runnable.name)


# ---- a benchmark's table as tidy rows, and back ---------------------------------------------------------


def table_rows(ctx: Any, table: list[dict[str, Any]], cfg: Any = None) -> list[dict[str, Any]]:
    """A measured table as rows (split "table", step = the table row, metric = the column): a number
    is the row's value, a text cell is kept in slice_value (value null). With `cfg`, one more row
    records the config (JSON), and one the machine's state (1-min load average, threads, time), so
    `table_from_rows` gives back exactly what the report needs."""
    import json

    rows = []
    for i, record in enumerate(table):
        for column, cell in record.items():
            if isinstance(cell, (int, float)) and not isinstance(cell, bool):
                rows.append(ctx.row(model="table", split="table", metric=column, value=float(cell), step=i))
            else:
                text = "" if cell is None else str(cell)
                rows.append(ctx.row(model="table", split="table", metric=column, value=math.nan, step=i,
                                    slice_key="text", slice_value=text))  # fmt: skip
    for key, obj in (("machine", machine()), ("config", None if cfg is None else cfg_dict(cfg))):
        if obj is not None:
            rows.append(ctx.row(model="table", split="_meta", metric=key, value=math.nan, step=0,
                                slice_key="json", slice_value=json.dumps(obj)))  # fmt: skip
    return rows


def machine() -> dict[str, Any]:
    """What a timing depends on: the 1-min load average, cores, torch threads, time, torch, the GPU."""
    import os
    import time

    import torch

    info = {"load1": os.getloadavg()[0], "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "time": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__}  # fmt: skip
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def cfg_dict(cfg: Any) -> dict[str, Any]:
    from repro.config import to_dict

    return to_dict(cfg)


def table_from_rows(df: pd.DataFrame) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(table, machine, config) of the most recent run among `df`'s rows (see `table_rows`)."""
    import json

    meta = df[df.split == "_meta"]
    runs = []
    for (variant, seed), sub in meta.groupby(["variant", "seed"]):
        machine = json.loads(sub[sub.metric == "machine"].slice_value.iloc[0])
        runs.append((machine.get("time", ""), variant, seed))
    if not runs:
        raise UserError("these rows hold no benchmark table; run the benchmark again.")
    _, variant, seed = max(runs)
    run = df[(df.variant == variant) & (df.seed == seed)]
    info = {m: json.loads(v) for m, v in run[run.split == "_meta"][["metric", "slice_value"]].itertuples(index=False)}
    cells = run[run.split == "table"]
    table: list[dict[str, Any]] = []
    for _, row in cells.sort_values("step", kind="stable").iterrows():
        while len(table) <= int(row.step):
            table.append({})
        text = row.get("slice_value") if row.get("slice_key") == "text" else None
        table[int(row.step)][row.metric] = text if text is not None else row.value
    return table, info.get("machine", {}), info.get("config", {})


def machine_note(machine: dict[str, Any]) -> str:
    """`Measured 2026-12-06 14:00 on CPU (2 cores, 2 torch threads, 1-min load 0.4), torch 2.13.0.`"""
    where = machine.get("gpu") or f"CPU ({machine.get('cpus')} cores, {machine.get('threads')} torch threads"
    where += "" if machine.get("gpu") else f", 1-min load {machine.get('load1', float('nan')):.1f})"
    return f"Measured {machine.get('time', '?')} on {where}, torch {machine.get('torch', '?')}."


def pick_preset(df: pd.DataFrame, preset: str | None = None) -> str:
    """The preset a report shows: the one asked for, else the largest scale present."""
    present = set(df["preset"])
    if preset is not None:
        if preset not in present:
            raise UserError(f"no finished '{preset}' runs to report; found presets {sorted(present)}.")
        return preset
    for p in PRESET_ORDER:
        if p in present:
            return p
    raise UserError("no finished runs to report.")


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}g}"
    return str(x)


def write_table(
    entries: list[dict[str, Any]],
    out_dir: Path,
    title: str,
    notes: list[str],
    extra: dict[str, list[dict[str, Any]]] | None = None,
) -> list[Path]:
    """Write `table.md` and `table.csv`: each entry a row with the paper's number or claim beside
    ours and a verdict. `extra` adds titled sections (to the markdown, and `table_<n>.csv` each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / "table.md"
    lines, paths = [f"# {title}", ""], [md_path]
    sections = {"": entries, **(extra or {})}
    for i, (heading, rows) in enumerate(sections.items()):
        df = pd.DataFrame(rows)
        csv_path = out_dir / ("table.csv" if i == 0 else f"table_{i}.csv")
        df.to_csv(csv_path, index=False)
        paths.append(csv_path)
        if heading:
            lines += [f"## {heading}", ""]
        lines += ["| " + " | ".join(df.columns) + " |", "| " + " | ".join("---" for _ in df.columns) + " |"]
        lines += ["| " + " | ".join(fmt(v).replace("|", "/") for v in r.values) + " |" for _, r in df.iterrows()]
        lines.append("")
    md_path.write_text("\n".join([*lines, *notes, ""]))
    return paths


def figure_style() -> None:
    """One look for every figure (headless backend, readable sizes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 130,
            "savefig.bbox": "tight",
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 9,
            "legend.fontsize": 8,
        }
    )


def plot_loss_curves(panels: dict[str, list[tuple[str, pd.Series, pd.Series]]], path: Path, smooth: int = 1) -> Path:
    """Training-curve figure shared by the LM experiments: one panel per title, and per line a
    (label, train loss by step, validation loss by step); train thin (moving average of `smooth`
    logged points), validation with markers, one colour per line."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False, sharey=True)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for i, (label, train, val) in enumerate(lines):
            if len(train):
                k = smooth if len(train) > smooth else 1
                values = np.convolve(train.to_numpy(), np.ones(k) / k, mode="valid")
                ax.plot(train.index[: len(values)], values, color=f"C{i}", alpha=0.5, lw=1, label=f"{label} train")
            if len(val):
                ax.plot(val.index, val.to_numpy(), "o-", color=f"C{i}", ms=3, label=f"{label} validation")
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0, 0].set_ylabel("cross-entropy (nats/token)")
    axes[0, 0].legend()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_index(reports: Path, runnables: list[Any]) -> Path:
    """`reports/index.md`: every runnable by kind, its paper reference and whether a report exists."""
    lines = ["# Reports", ""]
    verbs = {"experiment": "repro run", "evaluation": "repro eval", "benchmark": "repro bench"}
    for kind, verb in verbs.items():
        lines += [
            f"## {kind.capitalize()}s (`{verb}`)",
            "",
            "| name | paper | claim | report |",
            "| --- | --- | --- | --- |",
        ]
        for r in (r for r in runnables if r.kind == kind):
            table = reports / r.name / "table.md"
            link = f"[{r.name}/table.md]({r.name}/table.md)" if table.exists() else "not yet run"
            lines.append(f"| `{r.name}` | {r.paper_ref} | {r.claim} | {link} |")
        lines.append("")
    lines += ["Regenerate with `repro report --all` (reads run directories under `runs/`).", ""]
    path = reports / "index.md"
    reports.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
