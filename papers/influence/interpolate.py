"""Appendix C, Figure 4 analog: one training image transformed by G at ten taus on a line between two taus.

Figure 4 of the paper (CIFAR-10): "images are transformed by applying linearly interpolated ten tau's to the
same training sample"; rows (i) the training image, (ii) the spatial transformation model's outputs, (iii) the
spatially transformed images, (iv) the appearance transformation model's outputs, (v) the final images. Ours
draws the same five rows from the cached G of a table (`tables.load_or_fit_generator`, the file `repro
prepare` writes under splits/<profile>/influence/transforms/):

* (ii) the displacement s - p of Eq. 20 (after smoothing) as a colour flow image: hue = direction, brightness =
  length, normalised by the largest length in the strip (printed in the panel title, in pixels);
* (iii) the warped image; (iv) the appearance change dx = c_w x + c_b (x~ - warped) on a diverging scale, 0 grey,
  normalised by the largest |dx| of the strip (RGB: per channel); (v) x~ (clipped to [0, 1] for display only).

tau_k = (1 - a_k) tau_0 + a_k tau_1, a_k = 0, 1/9, ..., 1, with tau_0, tau_1 two draws of G's training prior
Uniform[-1, 1]^128 (`--seed`); the image is the `--image`-th of G's training pool (train rows outside the
validation pool). Writes <out>/influence_figure4_<dataset>_<profile>.{png,json} (the JSON: G's file and sha256,
the taus' seed, per column the rms / max displacement in pixels and the rms pixel change).

    repro prepare --paper influence                                          # fits G (cpu: ~11-20 min per data set)
    python3 -m papers.influence.interpolate --profile cpu --table table2     # CIFAR-10 (the paper's figure)
    python3 -m papers.influence.interpolate --profile cpu --table table1     # MNIST

Without a cached G the command stops and says so; `--fit` fits and caches it first (the same file prepare
writes).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common.config import data_mirror, load_params
from common.data.subsample import dev_pool_rows
from common.errors import ConfigError
from common.io import write_json_atomic
from papers.influence import tables
from papers.influence.transforms import TAU_DIM, sample_tau


def proposed_config(params: dict, profile: str, table: str) -> dict:
    """The first `proposed` run config of the table (it carries G's params: one G per data set)."""
    profiles = params["influence"]["profiles"]
    if profile not in profiles:
        raise ConfigError(f"influence.profiles: no profile {profile!r}; expected one of {sorted(profiles)}")
    block = profiles[profile].get(table)
    if block is None:
        raise ConfigError(f"influence.profiles.{profile}: no {table}; expected one of "
                          f"{sorted(params['influence']['profiles'][profile])}")
    configs = [c for c in tables.run_configs(table, block, profile) if c["method"] == "proposed"]
    if not configs:
        raise ConfigError(f"influence.profiles.{profile}.{table}: no `proposed` method, so no G to interpolate")
    return configs[0]


def interpolation_taus(seed: int, steps: int = 10) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ends = sample_tau(2, gen, TAU_DIM)
    a = torch.linspace(0, 1, steps)[:, None]
    return (1 - a) * ends[0] + a * ends[1]


def strip(g, image: torch.Tensor, taus: torch.Tensor):
    """G applied to one image [C, H, W] at every tau [K, 128]: the Transformed batch [K, ...]."""
    with torch.no_grad():
        return g(image[None].expand(len(taus), *image.shape).contiguous(), taus)


def _flow_rgb(disp: np.ndarray, scale: float) -> np.ndarray:
    """[2, H, W] displacement -> [H, W, 3] colours (hue = direction, value = length / scale)."""
    from matplotlib.colors import hsv_to_rgb
    dx, dy = disp
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    val = np.clip(np.hypot(dx, dy) / max(scale, 1e-12), 0, 1)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), val], -1))


def _show(img: np.ndarray) -> np.ndarray:
    """[C, H, W] -> what imshow takes (grey: [H, W])."""
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def run(params: dict, profile: str, table: str, out_dir: Path, *, image: int = 0, seed: int = 0, steps: int = 10,
        fit: bool = False, mirror: str | None = None) -> dict:
    config = proposed_config(params, profile, table)
    splits_dir = Path(params["base"]["splits_dir"])
    split = splits_dir / profile / tables.PAPER / table / "_.json"      # G lives beside the table folders
    path = tables.transform_path(config, split)
    if not path.exists() and not fit:
        raise ConfigError(f"{path}: no cached G for {profile}/{table}; run `repro prepare --paper influence"
                          f"{'' if profile == params['base'].get('profile') else ' --profile ' + profile}` first "
                          "(or pass --fit to fit and cache it here)")
    data = tables._dataset(config, mirror)
    g, info = tables.load_or_fit_generator(config, data, split)
    train_x, train_y = data["train"]
    pool = np.flatnonzero(~dev_pool_rows(train_y, "train_tail", config["transform"]["dev_pool_size"]))
    x = tables._nchw(train_x, pool[[image]]).float()[0] / 255
    taus = interpolation_taus(seed, steps)
    out = strip(g, x, taus)
    size = x.shape[-1]
    disp_px = out.displacement.numpy() * size / 2                     # normalised [-1, 1] units -> pixels
    length = np.hypot(disp_px[:, 0], disp_px[:, 1])
    dx = (out.x - out.warped).numpy()
    cols = [{"alpha": float(a), "disp_rms_px": float(np.sqrt((length[k] ** 2).mean())),
             "disp_max_px": float(length[k].max()), "appearance_rms": float(np.sqrt((dx[k] ** 2).mean())),
             "image_rms_change": float((out.x[k] - x).pow(2).mean().sqrt())}
            for k, a in enumerate(torch.linspace(0, 1, steps))]
    report = {"profile": profile, "table": table, "dataset": config["dataset"], "generator": {
        "path": info["path"], "sha256": info["sha256"], "steps": config["transform"]["steps"],
        "images": info.get("images")}, "image_pool_index": image, "train_row": int(pool[image]),
        "label": int(train_y[pool[image]]), "tau_seed": seed, "columns": cols}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"influence_figure4_{config['dataset']}_{profile}"
    write_json_atomic(stem.with_suffix(".json"), report)
    plot(x.numpy(), disp_px, out.warped.numpy(), dx, out.x.numpy(), report, stem.with_suffix(".png"))
    return report


def plot(x, disp, warped, dx, final, report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(disp)
    grey = x.shape[0] == 1
    lmax = float(np.hypot(disp[:, 0], disp[:, 1]).max())
    amax = float(np.abs(dx).max()) or 1.0
    names = ["(i) training image", f"(ii) spatial: s - p (max {lmax:.2f} px)", "(iii) spatially transformed",
             f"(iv) appearance: dx (max |dx| {amax:.3f})", "(v) final x~"]
    fig, axes = plt.subplots(5, k, figsize=(1.3 * k, 1.45 * 5), squeeze=False)
    cmap = {"cmap": "gray", "vmin": 0, "vmax": 1} if grey else {}
    for j in range(k):
        axes[0][j].imshow(_show(x), **cmap)
        axes[1][j].imshow(_flow_rgb(disp[j], lmax))
        axes[2][j].imshow(np.clip(_show(warped[j]), 0, 1), **cmap)
        d = _show(dx[j])
        axes[3][j].imshow(d if grey else np.clip(0.5 + 0.5 * d / amax, 0, 1),
                          **({"cmap": "RdBu_r", "vmin": -amax, "vmax": amax} if grey else {}))
        axes[4][j].imshow(np.clip(_show(final[j]), 0, 1), **cmap)
        axes[0][j].set_title(f"a={report['columns'][j]['alpha']:.2f}", fontsize=7)
        for i in range(5):
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
    for i, name in enumerate(names):
        axes[i][0].set_ylabel(name, fontsize=6, rotation=0, ha="right", va="center")
    g = report["generator"]
    fig.suptitle(f"Fig. 4 analog: {report['dataset']} ({report['profile']}), G {g['path']} ({g['steps']} WGAN-GP "
                 f"steps), tau = (1-a) tau0 + a tau1, tau seed {report['tau_seed']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="default: base.profile of the params file")
    parser.add_argument("--table", default="table2", choices=sorted(tables.TABLES),
                        help="whose G: table2 = CIFAR-10 (the paper's figure), table1 = MNIST")
    parser.add_argument("--image", type=int, default=0, help="index into G's training pool")
    parser.add_argument("--seed", type=int, default=0, help="seed of the two end taus")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--fit", action="store_true", help="fit and cache G if it is not cached yet")
    parser.add_argument("--out", default="reports/figures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = load_params(args.params)
    profile = args.profile or params["base"]["profile"]
    mirror = data_mirror(params["base"])
    try:
        report = run(params, profile, args.table, Path(args.out), image=args.image, seed=args.seed,
                     steps=args.steps, fit=args.fit, mirror=mirror)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"G {report['generator']['path']}: rms displacement per column (px) "
          + " ".join(f"{c['disp_rms_px']:.2f}" for c in report["columns"]))
    print(f"wrote {Path(args.out)}/influence_figure4_{report['dataset']}_{profile}.png and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
