"""The retraining experiment: predicted (Eq. 10) vs actual leave-one-out change of the validation loss.

For an L2-regularised logistic regression and a small damped MLP on MNIST 1 vs 7 (Koh & Liang 2017's binary
MNIST task), both trained to convergence in float64 (`influence.fit`, trust-region Newton), each of >= 100
training points is removed and the model retrained from theta_hat to convergence; predicted_i =
grad l(z_i)^T s_val / N with s_val = (H + damping I)^-1 grad L_val by CG. Writes <out>/<profile>.json
(Pearson and Spearman per model, the points, the solver diagnostics) and <out>/<profile>.png (the scatter
plots). Not a DVC stage and not part of the tables; run it by hand:

    REPRO_DATA_MIRROR=/path/to/data python3 -m papers.influence.retraining --profile smoke   # ~10 s
    REPRO_DATA_MIRROR=/path/to/data python3 -m papers.influence.retraining --profile cpu     # ~1.5 min, 1 thread

Inputs: 28x28 digits average-pooled to `pool` x `pool` (pixels / 255), standardised with the train
statistics; the first n_train / n_val images of the two classes from the official train / test files
(order of the files). Choices (ours): L2 0.01 for both models (the MLP's Hessian is then positive definite
at theta_hat in practice; the damping 1e-3 guards the rest), Tanh hidden layer, the points an evenly spaced
sample of the training indices.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.data.mnist import load_mnist
from common.io import write_json_atomic
from papers.influence.influence import retraining_check

PROFILES = {
    "smoke": {"pool": 4, "n_train": 120, "n_val": 100, "points": 100, "hidden": 4, "l2": 0.01, "damping": 1e-3},
    "cpu": {"pool": 7, "n_train": 500, "n_val": 500, "points": 200, "hidden": 6, "l2": 0.01, "damping": 1e-3},
}
CLASSES = (1, 7)


def features(mirror: str | None, cfg: dict):
    data = load_mnist(mirror)

    def take(split, n):
        x, y = data[split]
        idx = np.flatnonzero(np.isin(y, CLASSES))[:n]
        t = torch.from_numpy(x[idx, ..., 0]).double()[:, None] / 255
        k = 28 // cfg["pool"]
        pooled = F.avg_pool2d(t[..., : k * cfg["pool"], : k * cfg["pool"]], k).flatten(1)
        return pooled, torch.from_numpy((y[idx] == CLASSES[1]).astype(np.int64))

    tx, ty = take("train", cfg["n_train"])
    vx, vy = take("test", cfg["n_val"])
    mean, std = tx.mean(0), tx.std(0).clamp_min(1e-6)
    return (tx - mean) / std, ty, (vx - mean) / std, vy


def run(profile: str, mirror: str | None, out_dir: Path) -> dict:
    cfg = PROFILES[profile]
    tx, ty, vx, vy = features(mirror, cfg)
    d = tx.shape[1]
    indices = np.linspace(0, len(tx) - 1, cfg["points"]).round().astype(int).tolist()
    torch.manual_seed(0)
    models = {"logistic_regression": (nn.Linear(d, 2).double(), 0.0),
              "mlp_damped": (nn.Sequential(nn.Linear(d, cfg["hidden"]), nn.Tanh(),
                                           nn.Linear(cfg["hidden"], 2)).double(),
                             cfg["damping"])}
    report = {"profile": profile, "config": cfg, "classes": list(CLASSES), "models": {}}
    for name, (model, damping) in models.items():
        t0 = time.perf_counter()
        out = retraining_check(model, tx, ty, vx, vy, l2=cfg["l2"], damping=damping, indices=indices, method="cg")
        report["models"][name] = {
            "pearson": out["pearson"], "spearman": out["spearman"], "damping": damping, "n_points": len(indices),
            "n_train": out["n_train"], "parameters": int(out["theta"].numel()), "solve": out["solve"],
            "grad_inf_full": out["grad_inf_full"], "grad_inf_retrained_max": out["grad_inf_retrained_max"],
            "seconds": time.perf_counter() - t0, "indices": out["indices"],
            "predicted": out["predicted"].tolist(), "actual": out["actual"].tolist()}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{profile}.json", report)
    scatter(report, out_dir / f"{profile}.png")
    return report


def scatter(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report["models"]), figsize=(5 * len(report["models"]), 4.5))
    for ax, (name, m) in zip(np.atleast_1d(axes), report["models"].items()):
        pred, act = np.asarray(m["predicted"]), np.asarray(m["actual"])
        lim = [min(pred.min(), act.min()), max(pred.max(), act.max())]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.scatter(act, pred, s=10)
        ax.ticklabel_format(style="sci", scilimits=(-2, 2))
        ax.tick_params(labelsize=8)
        ax.set_xlabel("actual dL_val (leave-one-out retraining)")
        ax.set_ylabel("predicted -I_up,loss / N (Eq. 10)")
        ax.set_title(f"{name}: Pearson {m['pearson']:.3f}, Spearman {m['spearman']:.3f}", fontsize=9)
    fig.suptitle(f"MNIST {report['classes'][0]} vs {report['classes'][1]}, {report['config']['points']} removed points "
                 f"({report['profile']} profile)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    parser.add_argument("--out", default="reports/influence_retraining", help="output folder (JSON + PNG)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = run(args.profile, os.environ.get("REPRO_DATA_MIRROR"), Path(args.out))
    for name, m in report["models"].items():
        print(f"{name}: pearson {m['pearson']:.4f} spearman {m['spearman']:.4f} ({m['n_points']} points, "
              f"{m['seconds']:.1f} s)")
    print(f"wrote {Path(args.out) / (args.profile + '.json')} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
