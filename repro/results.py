"""Result rows, their collection into pandas, and the paper-vs-ours report pieces."""

from __future__ import annotations

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


def interval95(values: list[float] | list[bool]) -> tuple[float, float]:
    """95% Wilson score interval of the mean of per-sample scores in [0, 1] (exact Wilson for 0/1
    outcomes; for fractional scores it treats their sum as the success count). (nan, nan) for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    z = 1.959964
    p = float(sum(values)) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fmt_ci(value: float, lo: float, hi: float, n: int, scale: float = 1.0, digits: int = 2) -> str:
    """`0.25 [0.14, 0.40] n=28`: a cell with its 95% interval and sample count."""
    return f"{value * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}] n={n}"


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Atomic (rows.jsonl exists only for finished runs) and strict JSON: a non-finite value is null."""
    files.write_jsonl(path, rows)


def collect(runs: Path, experiment: str | None = None) -> pd.DataFrame:
    """All finished runs under `runs` (optionally one experiment) as one DataFrame."""
    pattern = f"{experiment or '*'}/*/*/s*/rows.jsonl"
    frames = []
    for path in sorted(runs.glob(pattern)):
        frames.append(pd.DataFrame(files.read_jsonl(path)))
    if not frames:
        return pd.DataFrame(columns=[*ROW_FIELDS, *OPTIONAL_FIELDS])
    return pd.concat(frames, ignore_index=True)


def eval_report(exp: Any, runs: Path, reports: Path | None, preset: str) -> list[Path]:
    """An evaluation command's report from every finished run of `preset` under RUNS, into
    REPORTS/NAME/. Without --reports: reports/ for the default runs/ root, RUNS/reports/ for any other
    (a scratch `--out /tmp/x` never rewrites the committed tables)."""
    if reports is None:
        reports = Path("reports") if runs == Path("runs") else runs / "reports"
    df = collect(runs, exp.name)
    return exp.report(df[df.preset == preset].reset_index(drop=True), reports / exp.name)


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


EVALUATION_REPORTS = {
    "ruler": "repro eval ruler",
    "icl": "repro eval icl",
    "harness": "repro eval harness",
    "kernels": "repro bench kernels",
}


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


def write_index(reports: Path, experiments: list[Any]) -> Path:
    """`reports/index.md`: every experiment, its paper reference and whether a report exists."""
    lines = ["# Reports", "", "| experiment | paper | claim | report |", "| --- | --- | --- | --- |"]
    for exp in experiments:
        table = reports / exp.name / "table.md"
        link = f"[{exp.name}/table.md]({exp.name}/table.md)" if table.exists() else "not yet run"
        lines.append(f"| `{exp.name}` | {exp.paper_ref} | {exp.claim} | {link} |")
    lines += ["", "## Evaluations and benchmarks", "", "| report | written by |", "| --- | --- |"]
    for name, command in EVALUATION_REPORTS.items():
        page = next((reports / name / f for f in ("table.md", "README.md") if (reports / name / f).exists()), None)
        if page is not None:
            lines.append(f"| [{name}]({page.relative_to(reports)}) | `{command}` |")
    for table in sorted(reports.glob("bench/*/table.md")):
        lines.append(f"| [{table.parent.name}]({table.relative_to(reports)}) | `repro bench train` |")
    lines += ["", "Regenerate with `repro report --all` (reads run directories under `runs/`).", ""]
    path = reports / "index.md"
    reports.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


# ---- paired-by-seed statistics (issue 17) ------------------------------------------------------------

# Two-sided 95% Student-t quantiles by degrees of freedom; beyond 30 the normal 1.96 is close enough.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
T975.update({11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042})


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (table; the next smaller tabled
    df, which is conservative, between entries; 1.96 beyond 30)."""
    if df < 1:
        return math.nan
    if df > 30:
        return 1.96
    return T975[max(k for k in T975 if k <= df)]


def t_interval(values: Any) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval over seeds (nan half-width for one value)."""
    v = pd.Series(values, dtype=float).to_numpy()
    if len(v) < 2:
        return float(v.mean()) if len(v) else math.nan, math.nan
    return float(v.mean()), t975(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))


def paired_diff(a: dict[int, float] | pd.Series, b: dict[int, float] | pd.Series) -> dict[str, Any]:
    """Mean of the per-seed differences a[s] - b[s] over the seeds both arms ran, with its 95% t-interval.

    Pairing by seed removes what the arms share (the same initialisation, batch order and test
    images): the interval measures how much the *difference* moves from seed to seed, which is what a
    verdict on the direction of an effect needs. Returns mean, lo, hi, n and the seeds used."""
    a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    seeds = sorted(set(a.index) & set(b.index))
    d = (a[seeds] - b[seeds]).to_numpy()
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    half = t975(n - 1) * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "seeds": seeds}


def paired_verdict(p: dict[str, Any], expected_sign: int, scale: float = 100.0, unit: str = "pt") -> str:
    """Whether the paper's direction (`expected_sign` of the difference) holds beyond the paired 95%
    interval. The wording starts with `reproduced`, `not reproduced`, `same direction` or
    `opposite direction` (what `verdict_summary` counts)."""
    if p["n"] == 0 or math.isnan(p["mean"]):
        return "no paired seeds"
    if p["mean"] == 0 and p["lo"] == p["hi"]:  # identical in every seed (e.g. both at chance)
        return f"no difference in any of {p['n']} seeds"
    same = (p["mean"] > 0) == (expected_sign > 0)
    if p["n"] < 2:
        return f"{'same' if same else 'opposite'} direction, one seed: no interval"
    ci = f"[{scale * p['lo']:+.2f}, {scale * p['hi']:+.2f}] {unit}, n={p['n']}"
    if p["lo"] > 0 or p["hi"] < 0:
        return f"reproduced (same direction, 95% CI {ci})" if same else f"not reproduced (opposite, 95% CI {ci})"
    return f"{'same' if same else 'opposite'} direction, within noise (95% CI {ci})"


def fmt_paired(p: dict[str, Any], scale: float = 100.0) -> str:
    """`+1.23 [+0.40, +2.06]` (mean and 95% interval of the paired difference, in points)."""
    if p["n"] < 2:
        return f"{scale * p['mean']:+.2f}" if p["n"] else "n/a"
    return f"{scale * p['mean']:+.2f} [{scale * p['lo']:+.2f}, {scale * p['hi']:+.2f}]"
