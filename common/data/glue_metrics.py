"""The official GLUE metrics of CoLA, RTE, MRPC and STS-B, from library implementations.

CoLA: Matthews correlation (`sklearn.metrics.matthews_corrcoef`); RTE: accuracy
(`sklearn.metrics.accuracy_score`); MRPC: accuracy and F1 of the positive class 1 = paraphrase
(`sklearn.metrics.f1_score`); STS-B: Pearson and Spearman correlation (`scipy.stats.pearsonr`,
`scipy.stats.spearmanr`). Values are plain floats on the libraries' scale (MCC and correlations in
[-1, 1], accuracy and F1 in [0, 1]; multiply by 100 for the papers' tables).

Degenerate inputs never return NaN:
- MCC with constant predictions or constant labels (a zero row or column sum of the confusion
  matrix) is 0.0 (sklearn's convention; its warning is silenced);
- F1 with no positive prediction and no positive label is 0.0 (`zero_division=0.0`);
- Pearson or Spearman with constant predictions or constant labels is 0.0 (undefined; scipy would
  return NaN with a ConstantInputWarning).
Refused with ValueError: empty or unequal-length inputs, class labels other than 0/1 (so the
unlabelled CoLA/RTE test sets, label -1, cannot be scored by mistake), non-finite scores or
predictions (a diverged STS-B model is an error, not a score), and fewer than 2 STS-B examples.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.stats
import sklearn.metrics

TASK_METRICS = {"cola": ("mcc",), "rte": ("accuracy",), "mrpc": ("accuracy", "f1"),
                "stsb": ("pearson", "spearman")}


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1 or len(y_true) != len(y_pred) or not len(y_true):
        raise ValueError(f"expected two non-empty 1-d arrays of equal length, got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    return y_true, y_pred


def _classes(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _pair(y_true, y_pred)
    for name, values in (("labels", y_true), ("predictions", y_pred)):
        bad = values[~np.isin(values, (0, 1))]
        if len(bad):
            raise ValueError(f"{name}: expected classes 0 and 1 only, got {bad[0].item()!r}"
                             + (" (label -1 marks an unlabelled test set, which cannot be scored)"
                                if name == "labels" and bad[0] == -1 else ""))
    return y_true.astype(np.int64), y_pred.astype(np.int64)


def _scores(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _pair(y_true, y_pred)
    y_true, y_pred = y_true.astype(np.float64), y_pred.astype(np.float64)
    for name, values in (("labels", y_true), ("predictions", y_pred)):
        if not np.isfinite(values).all():
            raise ValueError(f"{name}: expected finite scores, got {values[~np.isfinite(values)][0].item()!r}")
    if len(y_true) < 2:
        raise ValueError(f"a correlation needs at least 2 examples, got {len(y_true)}")
    return y_true, y_pred


def mcc(y_true, y_pred) -> float:
    """Matthews correlation of binary labels (CoLA); 0.0 when a confusion-matrix margin is zero."""
    y_true, y_pred = _classes(y_true, y_pred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # "a single label was found": 0.0, as documented
        return float(sklearn.metrics.matthews_corrcoef(y_true, y_pred))


def accuracy(y_true, y_pred) -> float:
    """Fraction of correct binary predictions (RTE, MRPC)."""
    return float(sklearn.metrics.accuracy_score(*_classes(y_true, y_pred)))


def f1(y_true, y_pred) -> float:
    """F1 of the positive class 1 (MRPC: paraphrase); 0.0 without any positive label or prediction."""
    y_true, y_pred = _classes(y_true, y_pred)
    return float(sklearn.metrics.f1_score(y_true, y_pred, labels=[0, 1], pos_label=1, average="binary",
                                          zero_division=0.0))


def pearson(y_true, y_pred) -> float:
    """Pearson correlation of scores (STS-B); 0.0 when either side is constant."""
    y_true, y_pred = _scores(y_true, y_pred)
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return 0.0
    return float(scipy.stats.pearsonr(y_true, y_pred).statistic)


def spearman(y_true, y_pred) -> float:
    """Spearman rank correlation of scores (STS-B; ties get average ranks); 0.0 when either side is constant."""
    y_true, y_pred = _scores(y_true, y_pred)
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return 0.0
    return float(scipy.stats.spearmanr(y_true, y_pred).statistic)


METRICS = {"mcc": mcc, "accuracy": accuracy, "f1": f1, "pearson": pearson, "spearman": spearman}


def glue_metrics(task: str, y_true, y_pred) -> dict[str, float]:
    """{metric: value} of a task's official metrics, e.g. glue_metrics("mrpc", y, p) -> {"accuracy", "f1"}.

    Predictions are class ids (0/1) for cola, rte, mrpc and real-valued scores for stsb.
    """
    if task not in TASK_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(TASK_METRICS)}")
    return {name: METRICS[name](y_true, y_pred) for name in TASK_METRICS[task]}


def glue_score(task: str, metrics: dict[str, float]) -> float:
    """The task's single GLUE score: the mean of its official metrics (MRPC: (acc + F1) / 2, STS-B:
    (Pearson + Spearman) / 2, the GLUE leaderboard's convention; CoLA and RTE: their one metric)."""
    return float(np.mean([metrics[name] for name in TASK_METRICS[task]]))
