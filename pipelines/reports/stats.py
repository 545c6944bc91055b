"""Verdict statistics: per-cell aggregates over seeds, the two verdict rules and the tests of an
ordering `a > b` on our runs. Pure functions of numbers and result dicts (no files, no markdown)."""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

CELL_KEYS = ["table", "setting", "method"]
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95


@dataclass(frozen=True)
class Stats:
    """Test accuracy over seeds: mean and population std of the `n` finite values. For a published
    cell, `std` is None where the paper prints no std (and `n` is the cell's own run count if it gives one)."""
    n: int
    mean: float
    std: float | None
    n_failed: int = 0
    n_diverged: int = 0    # counted in n: training stopped on NaN/inf, test acc from the best dev epoch before
    # the n finite values in seed order (empty for published numbers); not part of equality
    values: tuple[float, ...] = dataclasses.field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Verdict:
    kind: str          # OK | FAIL | SHAPE | ref | PENDING | NOT RUN; the first five are counted
    detail: str = ""   # printed after the kind: " (n<2)", ": <why not run>"

    @property
    def text(self) -> str:
        return self.kind + self.detail


def seed_stats(values: list[float | None]) -> Stats:
    """Mean and population std (ddof=0, as the paper) of the finite values; NaNs (and None) count as failed."""
    series = pd.Series([math.nan if v is None else float(v) for v in values], dtype=float)
    finite = series.dropna()
    if finite.empty:
        return Stats(0, math.nan, math.nan, len(values))
    return Stats(len(finite), float(finite.mean()), float(finite.std(ddof=0)), len(values) - len(finite),
                 values=tuple(finite))


def results_frame(results: list[dict]) -> pd.DataFrame:
    """One row per result: table, setting, method, seed, test_acc (NaN if missing), diverged."""
    rows = [{"table": r["table"], "setting": r["setting"], "method": r["method"], "seed": r["seed"],
             "test_acc": math.nan if r["metrics"].get("test_acc") is None else float(r["metrics"]["test_acc"]),
             "diverged": bool(r.get("diverged"))} for r in results]
    return pd.DataFrame(rows, columns=[*CELL_KEYS, "seed", "test_acc", "diverged"])


def aggregate(results: list[dict]) -> dict[tuple[str, str, str], Stats]:
    """Stats of test_acc per (table, setting, method): n finite runs, mean, population std, failed
    (NaN) and diverged counts, by one groupby over the results' frame."""
    frame = results_frame(results).sort_values("seed", kind="stable")
    if frame.empty:
        return {}
    grouped = frame.groupby(CELL_KEYS, sort=False)
    acc = grouped["test_acc"]
    cells = pd.DataFrame({"runs": acc.size(), "n": acc.count(), "mean": acc.mean(), "std": acc.std(ddof=0),
                          "n_diverged": grouped["diverged"].sum(),
                          "values": acc.agg(lambda s: tuple(float(v) for v in s.dropna()))})
    return {key: Stats(int(c.n), float(c["mean"]), float(c["std"]), int(c.runs - c.n), int(c.n_diverged),
                       values=c["values"])
            for key, c in cells.iterrows()}


def like_for_like_verdict(paper: Stats, ours: Stats) -> Verdict:
    """OK within two standard errors of the difference of means, else FAIL. Where the paper publishes
    no std (`paper.std` None) the paper's mean is taken as exact: the bound is two of our standard
    errors alone, 2·ours_std/√ours_n."""
    if ours.n < 2:
        return Verdict("PENDING", " (n<2)")
    paper_var = 0.0 if paper.std is None else paper.std ** 2 / paper.n
    bound = 2 * math.sqrt(paper_var + ours.std ** 2 / ours.n)
    return Verdict("OK" if abs(ours.mean - paper.mean) <= bound else "FAIL")


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def ordering_verdict(method: str, paper: Stats, ours: Stats, paper_base: Stats | None,
                     ours_base: Stats | None, reference: str = "base") -> Verdict:
    """SHAPE if the method sits on the same side of the table's reference row (`reference`, default
    `base`; `paper_base`/`ours_base` are its numbers in the same setting) as in the paper, else FAIL.
    Means only, so a published cell without a std takes part as any other."""
    if method == reference:
        return Verdict("ref")
    if paper_base is None:
        return Verdict("PENDING", f" (no `{reference}` row in this setting)")
    if ours.n < 2 or ours_base is None or ours_base.n < 2:
        return Verdict("PENDING", " (n<2)")
    same = _sign(ours.mean - ours_base.mean) == _sign(paper.mean - paper_base.mean)
    return Verdict("SHAPE" if same else "FAIL")


def difference_two_se(a: Stats, b: Stats) -> tuple[float, float]:
    """mean(a) − mean(b) and two standard errors of it (population stds over n, as the verdict rule)."""
    return a.mean - b.mean, 2 * math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)


def welch_p_value(a: tuple[float, ...], b: tuple[float, ...]) -> float | None:
    """Two-sided Welch t-test p-value of mean(a) = mean(b); None with fewer than 2 values in a group
    or when it is undefined (both groups constant)."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return None
    with warnings.catch_warnings():      # one constant group: scipy warns of precision loss, the p-value is exact
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _difference_of_means(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_difference_ci(a: tuple[float, ...], b: tuple[float, ...], confidence: float = CONFIDENCE_LEVEL,
                            n_resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of mean(a) − mean(b), each group resampled with replacement on
    its own; deterministic for a fixed seed. None with fewer than 2 values in a group."""
    if len(a) < 2 or len(b) < 2:
        return None
    result = scipy_stats.bootstrap((np.asarray(a, float), np.asarray(b, float)), _difference_of_means,
                                   n_resamples=n_resamples, vectorized=True, confidence_level=confidence,
                                   method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
