"""Every interval, paired difference, mean ± std and verdict wording the reports use: one module.

- Per-sample scores in [0, 1] (an evaluation's accuracy over items): `interval95` (Wilson), `fmt_ci`.
- Over seeds: `mean_std`, `t_interval` (Student t), and `paired_diff` for two arms that share their seeds
  (same initialisation, batches and test items), which is what a verdict on the direction of an effect
  needs: the interval measures how much the *difference* moves from seed to seed.
- Differences measured on the same test items by one seed: `diff_se` (binomial) and `binomial_verdict`.
- Averages of independent differences (one per benchmark, each with its standard error): `mean_of`.
- Verdicts: `verdict` is the one wording (`reproduced`, `not reproduced`, `same direction`, `opposite
  direction`, or `holds` / `does not hold` for a claim beyond the paper); `verdict_summary` counts them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

Z975 = 1.959964  # the normal 0.975 quantile
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


# ---- per-sample scores -----------------------------------------------------------------------------


def interval95(values: list[float] | list[bool]) -> tuple[float, float]:
    """95% Wilson score interval of the mean of per-sample scores in [0, 1] (exact Wilson for 0/1
    outcomes; for fractional scores it treats their sum as the success count). (nan, nan) for none."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    z = Z975
    p = float(sum(values)) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fmt_ci(value: float, lo: float, hi: float, n: int, scale: float = 1.0, digits: int = 2) -> str:
    """`0.25 [0.14, 0.40] n=28`: a cell with its 95% interval and sample count."""
    return f"{value * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}] n={n}"


# ---- over seeds --------------------------------------------------------------------------------------


def mean_std(values: Any, digits: int = 3, scale: float = 1.0) -> str:
    """`0.123 ± 0.004` (mean and sample standard deviation over seeds; the mean alone for one value)."""
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 0:
        return "n/a"
    return f"{v.mean():.{digits}f}" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def t_interval(values: Any) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval over seeds (nan half-width for one value)."""
    v = pd.Series(values, dtype=float).to_numpy()
    if len(v) < 2:
        return float(v.mean()) if len(v) else math.nan, math.nan
    return float(v.mean()), t975(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))


def paired_diff(a: dict[int, float] | pd.Series, b: dict[int, float] | pd.Series) -> dict[str, Any]:
    """Mean of the per-seed differences a[s] - b[s] over the seeds both arms ran, with its 95% t-interval.

    Returns mean, lo, hi, half (the interval's half-width), se (the standard error of the mean), n and
    the seeds used; half and se are nan for fewer than two seeds."""
    a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    seeds = sorted(set(a.index) & set(b.index))
    d = (a[seeds] - b[seeds]).to_numpy()
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else math.nan
    half = t975(n - 1) * se if n > 1 else math.nan
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "se": se, "n": n, "seeds": seeds}


def fmt_paired(p: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """`+1.23 [+0.40, +2.06]` (mean and 95% interval of the paired difference, in points by default)."""
    if p["n"] < 2:
        return f"{scale * p['mean']:+.{digits}f}" if p["n"] else "n/a"
    return f"{scale * p['mean']:+.{digits}f} [{scale * p['lo']:+.{digits}f}, {scale * p['hi']:+.{digits}f}]"


def mean_of(items: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean of k independent differences given as (mean, standard error), and the half-width of its
    normal 95% interval (sqrt of the summed variances over k): a group of benchmarks."""
    k = len(items)
    if not k:
        return math.nan, math.nan
    mean = sum(m for m, _ in items) / k
    return mean, 1.96 * math.sqrt(sum(se * se for _, se in items)) / k


# ---- one measurement on shared test items ------------------------------------------------------------


def diff_se(p1: float, p2: float, n: int) -> float:
    """Standard error of the difference of two accuracies, each measured on n test examples."""
    return float(np.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(1, n)))


def binomial_verdict(diff: float, expected_sign: int, se: float) -> str:
    """One seed: (method - baseline) in accuracy against 2 binomial standard errors of the difference.
    Within 2 s.e. the direction is still given, marked as within noise."""
    same = np.sign(diff) == expected_sign
    if abs(diff) < 2 * se:
        return f"{'same' if same else 'opposite'} direction, within noise (< 2 s.e. = {200 * se:.1f} pt)"
    return "reproduced (same direction)" if same else "not reproduced (opposite direction)"


# ---- verdict wording -----------------------------------------------------------------------------------


def verdict(mean: float, half: float, n: int, expected_sign: int, *, ci: str = "", beyond_paper: bool = False) -> str:
    """Whether a difference points the expected way (`expected_sign` +1 or -1) beyond its 95% interval
    (mean ± half over n seeds or items). The wording starts with `reproduced`, `not reproduced`, `same
    direction` or `opposite direction` (`holds` / `does not hold` for a claim beyond the paper), which
    is what `verdict_summary` counts; `ci` (the interval as text) is appended in parentheses."""
    if n == 0 or math.isnan(mean):
        return "no paired seeds"
    tail = f" ({ci})" if ci else ""
    same = (mean > 0) == (expected_sign > 0)
    if mean == 0 and (n < 2 or half == 0):  # identical in every seed (e.g. both at chance)
        return f"no difference in any of {n} seeds"
    if n < 2 or math.isnan(half):
        return f"{'same' if same else 'opposite'} direction, one seed: no interval{tail}"
    if abs(mean) > half:
        if beyond_paper:
            return f"{'holds: same' if same else 'does not hold: opposite'} direction, beyond noise{tail}"
        return f"{'reproduced: same' if same else 'not reproduced: opposite'} direction, beyond noise{tail}"
    return f"{'same' if same else 'opposite'} direction, within noise{tail}"


def paired_verdict(p: dict[str, Any], expected_sign: int, scale: float = 100.0, unit: str = "pt") -> str:
    """`verdict` of a `paired_diff`, with its interval in `unit` (points by default)."""
    ci = f"95% CI [{scale * p['lo']:+.2f}, {scale * p['hi']:+.2f}] {unit}, n={p['n']}" if p["n"] > 1 else ""
    return verdict(p["mean"], p["half"], p["n"], expected_sign, ci=ci)


def compare(a: dict[int, float] | pd.Series, b: dict[int, float] | pd.Series, expected_sign: int) -> tuple[str, str]:
    """(`+1.23 [+0.40, +2.06]`, verdict) for arm a minus arm b, paired by seed, in points."""
    p = paired_diff(a, b)
    return fmt_paired(p), paired_verdict(p, expected_sign)


def verdict_summary(verdicts: list[str], noise: str = "2 s.e.") -> str:
    """One line counting the verdicts: how many point the paper's way, and how many beyond the noise."""
    same = [v for v in verdicts if v.startswith(("reproduced", "same direction"))]
    resolved = [v for v in verdicts if v.startswith(("reproduced", "not reproduced"))]
    return (
        f"Summary: {len(same)} of {len(verdicts)} comparisons point the paper's way; "
        f"{len(resolved)} of {len(verdicts)} are beyond {noise} "
        f"({sum(v.startswith('reproduced') for v in verdicts)} reproduced, "
        f"{sum(v.startswith('not reproduced') for v in verdicts)} opposite)."
    )
