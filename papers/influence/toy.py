"""The toy 2D study of *Learning to Augment Influential Data* (Sec. 5.1, Figure 3, both rows).

A 3-layer MLP F (2 -> h -> h -> 2, Tanh) classifies two-class 2D points; the augmentation model is a
translation only, x~ = x + t(x), with t(x) = bound * tanh(E(x)) from a small MLP E ("transitions along the
x-axis and y-axis"). E is trained as in Alg. 1 (Sec. 4.3 with Sec. 3.4's last-layer influence): s_val on F's
top layer (H + damping I solved directly), then Adam on E minimising the mean I_aug(z, z + t(z), z^val) over
the training points (Eq. 19; minimised, Eq. 15), then F trains on originals + x~. Compared with `random`
(translations uniform in [-bound, bound]^2, redrawn each round, same schedule) and `none` (originals only,
same number of F steps). Two rows, as the paper's figure:

* row 1 (`misclassified`): few training points of two interleaved half-moons; validation points from the
  same distribution, some misclassified by F. The paper: the influence pushes augmentation towards the
  misclassified validation samples.
* row 2 (`shifted`): training and validation from the same distribution, then the validation points moved
  down by `shift`. The paper: the augmentation learns a downward translation.

    python3 -m papers.influence.toy --profile smoke    # seconds: reports/figures/influence_figure3_smoke.{png,json}
    python3 -m papers.influence.toy --profile cpu      # ~1-2 min, 1 thread:
                                                       # reports/figures/influence_figure3.{png,json}

The figure (seed 0 of each row), columns: (i) training points + P(blue) of `none`'s F, (ii) validation points
+ the same contour, (iii) the influence-translated training points (arrows from the originals) + the contour
of F trained with them, (iv) validation points + that contour, (v) validation points + the contour of F
trained with random translations. The JSON holds every number (per seed and mean/std over seeds). Every
choice the paper leaves open is a key of PROFILES / ROWS (README lists them).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.io import write_json_atomic
from papers.influence.influence import DTYPE, LastLayerInfluence

PROFILES = {
    "smoke": {"seeds": 2, "hidden": 8, "warmup_steps": 100, "rounds": 1, "e_steps": 10, "f_steps": 50,
              "grid": 30, "n_val": 60},
    "cpu": {"seeds": 5, "hidden": 16, "warmup_steps": 1500, "rounds": 3, "e_steps": 200, "f_steps": 500,
            "grid": 120, "n_val": 200},
}
COMMON = {"lr": 0.01, "weight_decay": 1e-4, "e_lr": 0.01, "e_hidden": 32, "bound": 0.5, "damping": 0.01,
          "data_seed": 0}
ROWS = {  # per class: training points, moon noise; the validation shift (row 2)
    "misclassified": {"n_train": 12, "noise": 0.2, "shift": 0.0},
    "shifted": {"n_train": 40, "noise": 0.15, "shift": 0.5},
}
METHODS = ("none", "influence", "random")


def moons(n: int, noise: float, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """n points per class of two interleaved half-circles (class 0 upper, class 1 lower), Gaussian noise."""
    t0, t1 = rng.uniform(0, np.pi, n), rng.uniform(0, np.pi, n)
    x = np.concatenate([np.stack([np.cos(t0), np.sin(t0)], 1), np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)])
    x = x + noise * rng.randn(*x.shape)
    return x - np.array([0.5, 0.25]), np.repeat([0, 1], n)


def make_row(row: str, n_val: int, seed: int) -> dict[str, torch.Tensor]:
    spec, rng = ROWS[row], np.random.RandomState(seed)
    tx, ty = moons(spec["n_train"], spec["noise"], rng)
    vx, vy = moons(n_val // 2, spec["noise"], rng)
    vx = vx - np.array([0.0, spec["shift"]])
    as_t = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a)).to(dt)
    return {"train_x": as_t(tx, DTYPE), "train_y": as_t(ty, torch.int64),
            "val_x": as_t(vx, DTYPE), "val_y": as_t(vy, torch.int64)}


def mlp(hidden: int) -> nn.Sequential:
    """F: 3 Linear layers (the paper's "simple 3-layer neural network"); F[-1] is the top layer of Sec. 3.4."""
    return nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, 2)).to(DTYPE)


class Translation(nn.Module):
    """E for translations: t(x) = bound * tanh(MLP(x)), starting near t = 0."""

    def __init__(self, hidden: int, bound: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2)).to(DTYPE)
        self.bound = bound
        with torch.no_grad():
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bound * torch.tanh(self.net(x))


def train_f(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    """Full-batch Adam steps on the mean cross-entropy."""
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        out = model(x)
        return {"loss": float(F.cross_entropy(out, y)), "accuracy": float((out.argmax(1) == y).double().mean())}


def last_layer_influence(model: nn.Sequential, x: torch.Tensor, cfg: dict) -> LastLayerInfluence:
    with torch.no_grad():
        feats = model[:-1](x)
    return LastLayerInfluence(model[-1].weight, model[-1].bias, feats, damping=cfg["damping"])


def mean_i_aug(model: nn.Sequential, inf: LastLayerInfluence, x, x_aug, y, s_val) -> torch.Tensor:
    """Mean I_aug(z, z~, z^val) over the points (Eq. 19, last-layer closed form), differentiable in x_aug."""
    with torch.no_grad():
        base = model[:-1](x)
    return inf.aug_loss(base, model[:-1](x_aug), y, s_val).mean()


def run_method(method: str, data: dict, cfg: dict, seed: int) -> dict:
    """One method on one row and seed: warmup on originals, then `rounds` x (augment, F steps)."""
    torch.manual_seed(seed)
    model = mlp(cfg["hidden"])
    enc = Translation(cfg["e_hidden"], cfg["bound"])
    gen = torch.Generator().manual_seed(10_007 * (seed + 1))
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    e_opt = torch.optim.Adam(enc.parameters(), lr=cfg["e_lr"])
    x, y, vx, vy = data["train_x"], data["train_y"], data["val_x"], data["val_y"]
    train_f(model, opt, x, y, cfg["warmup_steps"])
    warm = evaluate(model, vx, vy)
    aug, rounds = None, []
    for _ in range(cfg["rounds"]):
        row = {}
        if method in ("influence", "random"):
            fx = x if aug is None else torch.cat([x, aug])        # the set F was last trained on
            inf = last_layer_influence(model, fx, cfg)
            with torch.no_grad():
                s_val = inf.s_val(model[:-1](vx), vy)
            model.requires_grad_(False)
            rand = x + cfg["bound"] * (2 * torch.rand(x.shape, generator=gen, dtype=DTYPE) - 1)
            row["i_aug_random"] = float(mean_i_aug(model, inf, x, rand, y, s_val))
            if method == "influence":
                losses = []
                for _ in range(cfg["e_steps"]):
                    loss = mean_i_aug(model, inf, x, x + enc(x), y, s_val)
                    e_opt.zero_grad(set_to_none=True)
                    loss.backward()
                    e_opt.step()
                    losses.append(float(loss.detach()))
                with torch.no_grad():
                    aug = x + enc(x)
                row.update(i_aug_first=losses[0], i_aug_last=float(mean_i_aug(model, inf, x, aug, y, s_val)))
            else:
                aug = rand
            model.requires_grad_(True)
        train_f(model, opt, x if aug is None else torch.cat([x, aug]), y if aug is None else torch.cat([y, y]),
                cfg["f_steps"])
        row.update(evaluate(model, vx, vy))
        rounds.append(row)
    out = {"val": evaluate(model, vx, vy), "train": evaluate(model, x, y), "after_warmup_val": warm,
           "rounds": rounds, "model": model}
    if aug is not None:
        t = aug - x
        out.update(translations=t, mean_translation=[float(v) for v in t.mean(0)],
                   mean_translation_norm=float(t.norm(dim=1).mean()))
    return out


def towards_misclassified(x: torch.Tensor, t: torch.Tensor, miss: torch.Tensor) -> float | None:
    """Mean decrease of the distance to the nearest misclassified validation point when x moves to x + t."""
    if len(miss) == 0:
        return None
    d0 = torch.cdist(x, miss).min(dim=1).values
    d1 = torch.cdist(x + t, miss).min(dim=1).values
    return float((d0 - d1).mean())


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def run(profile: str, out_dir: Path, stem: str) -> dict:
    cfg = {**COMMON, **PROFILES[profile]}
    report = {"profile": profile, "config": cfg, "rows_config": ROWS, "rows": {}}
    figure = {}
    for row in ROWS:
        data = make_row(row, cfg["n_val"], cfg["data_seed"])
        per_seed = []
        for seed in range(cfg["seeds"]):
            res = {m: run_method(m, data, cfg, seed) for m in METHODS}
            with torch.no_grad():
                wrong = res["none"]["model"](data["val_x"]).argmax(1) != data["val_y"]
            miss = data["val_x"][wrong]
            entry = {m: {k: v for k, v in r.items() if k not in ("model", "translations")} for m, r in res.items()}
            for m in ("influence", "random"):
                entry[m]["towards_misclassified"] = towards_misclassified(data["train_x"], res[m]["translations"], miss)
            entry["misclassified_by_none"] = int(wrong.sum())
            per_seed.append(entry)
            if seed == 0:
                figure[row] = (data, res)
        summary = {m: {"val_loss": _stats([e[m]["val"]["loss"] for e in per_seed]),
                       "val_accuracy": _stats([e[m]["val"]["accuracy"] for e in per_seed])} for m in METHODS}
        for m in ("influence", "random"):
            summary[m]["mean_translation_y"] = _stats([e[m]["mean_translation"][1] for e in per_seed])
            summary[m]["mean_translation_x"] = _stats([e[m]["mean_translation"][0] for e in per_seed])
            tow = [e[m]["towards_misclassified"] for e in per_seed if e[m]["towards_misclassified"] is not None]
            summary[m]["towards_misclassified"] = _stats(tow) if tow else None
            summary[m]["i_aug_last_round"] = _stats(
                [e[m]["rounds"][-1]["i_aug_last" if m == "influence" else "i_aug_random"] for e in per_seed])
        report["rows"][row] = {"per_seed": per_seed, "summary": summary, "n_val": len(data["val_y"]),
                               "n_train": len(data["train_y"])}
    report["verdicts"] = verdicts(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{stem}.json", report)
    plot(figure, cfg, out_dir / f"{stem}.png")
    return report


def verdicts(report: dict) -> list[str]:
    """The paper's two qualitative claims and the validation loss, each checked on the seeds' means."""
    out = []
    s1 = report["rows"]["misclassified"]["summary"]
    tow = s1["influence"]["towards_misclassified"]
    if tow is not None:
        rnd = s1["random"]["towards_misclassified"]
        out.append(f"row 1: influence translations move training points {tow['mean']:+.3f} closer to the nearest "
                   f"misclassified validation point (random: {rnd['mean']:+.3f}); paper: towards them -> "
                   + ("agrees" if tow["mean"] > 0 and tow["mean"] > rnd["mean"] else "does NOT agree"))
    s2 = report["rows"]["shifted"]["summary"]
    dy = s2["influence"]["mean_translation_y"]
    out.append(f"row 2: mean learned translation y {dy['mean']:+.3f} ± {dy['std']:.3f} (validation moved by "
               f"{-ROWS['shifted']['shift']:+.2f}); paper: downward -> "
               + ("agrees" if dy["mean"] < 0 else "does NOT agree"))
    for row, r in report["rows"].items():
        s = r["summary"]
        loss = {m: s[m]["val_loss"]["mean"] for m in METHODS}
        out.append(f"{row}: validation loss none {loss['none']:.3f}, influence {loss['influence']:.3f}, random "
                   f"{loss['random']:.3f} (mean of {s['none']['val_loss']['n']} seeds)")
    return out


def plot(figure: dict, cfg: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["(i) train, F(train)", "(ii) val, F(train)", "(iii) influence-translated train, F(aug)",
            "(iv) val, F(aug)", "(v) val, F(random translations)"]
    fig, axes = plt.subplots(len(figure), 5, figsize=(17, 3.5 * len(figure)), squeeze=False)
    colors = np.array(["tab:red", "tab:blue"])
    for r, (row, (data, res)) in enumerate(figure.items()):
        pts = torch.cat([data["train_x"], data["val_x"], data["train_x"] + res["influence"]["translations"]])
        lo, hi = pts.min(0).values.numpy() - 0.3, pts.max(0).values.numpy() + 0.3
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], cfg["grid"]), np.linspace(lo[1], hi[1], cfg["grid"]))
        grid = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], 1)).to(DTYPE)

        def contour(ax, model, grid=grid, gx=gx, gy=gy):
            with torch.no_grad():
                p = torch.softmax(model(grid), 1)[:, 1].reshape(gx.shape).numpy()
            ax.contourf(gx, gy, p, levels=np.linspace(0, 1, 11), cmap="RdBu", alpha=0.45)
            ax.contour(gx, gy, p, levels=[0.5], colors="k", linewidths=0.8)

        tx, ty = data["train_x"].numpy(), data["train_y"].numpy()
        vx, vy = data["val_x"].numpy(), data["val_y"].numpy()
        t = res["influence"]["translations"].numpy()
        for c, ax in enumerate(axes[r]):
            contour(ax, res["none" if c < 2 else "influence" if c < 4 else "random"]["model"])
            if c == 0:
                ax.scatter(tx[:, 0], tx[:, 1], c=colors[ty], s=18, edgecolors="k", linewidths=0.4)
            elif c == 2:
                ax.scatter(tx[:, 0], tx[:, 1], c=colors[ty], s=10, alpha=0.35)
                ax.quiver(tx[:, 0], tx[:, 1], t[:, 0], t[:, 1], angles="xy", scale_units="xy", scale=1,
                          width=0.004, color="0.25")
                ax.scatter(tx[:, 0] + t[:, 0], tx[:, 1] + t[:, 1], c=colors[ty], s=18, marker="^", edgecolors="k",
                           linewidths=0.4)
            else:
                ax.scatter(vx[:, 0], vx[:, 1], c=colors[vy], s=8, edgecolors="none", alpha=0.8)
            if c in (1, 3, 4):
                m = "none" if c == 1 else "influence" if c == 3 else "random"
                v = res[m]["val"]
                ax.text(0.02, 0.02, f"val loss {v['loss']:.3f}, acc {v['accuracy']:.2f}", transform=ax.transAxes,
                        fontsize=7, bbox={"facecolor": "white", "alpha": 0.7, "lw": 0})
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r][0].set_ylabel(f"row {r + 1}: {row}", fontsize=9)
    fig.suptitle("Toy 2D study (Fig. 3 analog): translation-only augmentation, 3-layer MLP; contour = P(blue); "
                 f"seed 0 of {cfg['seeds']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke")
    parser.add_argument("--out", default="reports/figures", help="output folder (PNG + JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    stem = "influence_figure3" if args.profile == "cpu" else f"influence_figure3_{args.profile}"
    t0 = time.perf_counter()
    report = run(args.profile, Path(args.out), stem)
    for line in report["verdicts"]:
        print(line)
    print(f"wrote {Path(args.out) / stem}.json and .png ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
