"""What the learned augmentations of `proposed` look like: one table run, re-run with an observer per encoder round.

Alg. 1 trains E to lower the mean I_aug of x~ = G(x, E(x)) through the fixed F and G. Whether that yields a
useful augmentation depends on what E outputs and on what G makes of it. After each encoder round this records,
on a fixed probe batch (the first `--probe` train originals, F in eval mode, no gradient):

* E's tau: mean |tau|, the fraction of coordinates saturated (|tau| > 0.99, Tanh's end) and the mean over the
  128 coordinates of the std over the batch (0 = one tau for every image);
* x~ = G(x, E(x)) beside x~ = G(x, tau) with tau from G's training prior U[-1, 1]^128 (a fixed generator): the
  rms pixel change, the pixel range and the fraction of pixels outside [0, 1] (x~ is not clamped, README);
* F's accuracy and mean cross-entropy (with the true labels) on x, x~(E) and x~(prior).

The observer reads state only (its own RNG, eval mode restored to train), so the run is the table's run: its
test accuracy must equal the committed result of the same config, which the JSON records beside it. Writes
<out>/<profile>_<table>_<setting>_seed<k>.json; not a DVC stage, run by hand after `repro prepare`:

    python3 -m papers.influence.encoder_probe --profile cpu --table table1 --setting mnist_1pct --seed 0  # ~4 min
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common.config import config_hash, data_mirror, load_params
from common.errors import ConfigError
from common.io import write_json_atomic
from common.run.results import RunKey, read_result
from papers.influence import tables
from papers.influence.training import AugmentStep, to_unit
from papers.influence.transforms import sample_tau

SATURATED = 0.99


def run_config(params: dict, profile: str, table: str, setting: str, seed: int) -> dict:
    """The table's `proposed` run config for (setting, seed), exactly as `repro run` makes it."""
    block = params["influence"]["profiles"].get(profile, {}).get(table)
    if block is None:
        raise ConfigError(f"influence.profiles.{profile}.{table}: not in the params file")
    configs = [c for c in tables.run_configs(table, block, profile)
               if c["method"] == "proposed" and c["setting"] == setting and c["seed"] == seed]
    if not configs:
        raise ConfigError(f"influence.profiles.{profile}.{table}: no `proposed` run with setting {setting!r} and "
                          f"seed {seed}")
    return configs[0]


def prepared_split(splits_dir: Path, config: dict) -> Path:
    """The split index file `repro prepare` wrote for this run (G is cached beside the table folders)."""
    folder = splits_dir / config["profile"] / tables.PAPER / config["table"]
    found = sorted(folder.glob(f"{config['setting']}_dataseed{config['data_seed']}_*.json"))
    if len(found) != 1:
        raise ConfigError(f"{folder}: expected one prepared split file for {config['setting']} (data seed "
                          f"{config['data_seed']}), found {len(found)}; run `repro prepare --paper influence` first")
    return found[0]


class RoundProbe:
    """The per-round observer: statistics of E's tau, of x~ and of F on x~ (module docstring)."""

    def __init__(self, probe_size: int, seed: int = 0):
        self.probe_size, self.gen = int(probe_size), torch.Generator().manual_seed(seed)
        self.rows: list[dict] = []

    def __call__(self, step: AugmentStep, round_row: dict) -> None:
        model, was_training = step.model, step.model.training
        model.eval()
        try:
            with torch.no_grad():
                x, y = to_unit(step.train.x[: self.probe_size]), step.train.y[: self.probe_size]
                tau = step.e(x)
                x_e = step.g(x, tau).x
                x_r = step.g(x, sample_tau(len(x), self.gen, tau.shape[1]).to(x.device)).x
                row = {"epoch": round_row["epoch"], "i_aug_first": round_row["i_aug_first"],
                       "i_aug_last": round_row["i_aug_last"], "tau_abs_mean": float(tau.abs().mean()),
                       "tau_saturated": float((tau.abs() > SATURATED).float().mean()),
                       "tau_std_over_batch": float(tau.std(0).mean()) if len(tau) > 1 else 0.0}
                for name, images in (("original", x), ("encoder", x_e), ("prior", x_r)):
                    logits = model(images)
                    row[name] = {"acc": float((logits.argmax(1) == y).float().mean() * 100),
                                 "ce": float(F.cross_entropy(logits, y)),
                                 "rms_change": float((images - x).pow(2).mean().sqrt()),
                                 "min": float(images.min()), "max": float(images.max()),
                                 "outside_unit": float(((images < 0) | (images > 1)).float().mean())}
        finally:
            model.train(was_training)
        self.rows.append(row)


def run(params: dict, profile: str, table: str, setting: str, seed: int, out_dir: Path, *, probe_size: int = 512,
        mirror: str | None = None) -> dict:
    config = run_config(params, profile, table, setting, seed)
    split = prepared_split(Path(params["base"]["splits_dir"]), config)
    if not tables.transform_path(config, split).exists():
        raise ConfigError(f"{tables.transform_path(config, split)}: no cached G; run `repro prepare --paper "
                          "influence` first")
    probe = RoundProbe(probe_size)
    t0 = time.perf_counter()
    outcome = tables.execute(config, mirror, split_path=split, on_round=probe)
    key = RunKey(config["paper"], table, setting, "proposed", seed)
    committed = read_result(key.path(Path(params["base"]["results_dir"]), profile))
    same = committed is not None and committed["config_hash"] == config_hash(config)
    report = {"profile": profile, "table": table, "setting": setting, "seed": seed, "config_hash": config_hash(config),
              "probe_size": probe_size, "seconds": time.perf_counter() - t0,
              "test_acc": outcome["metrics"]["test_acc"], "rounds": probe.rows,
              "committed_test_acc": committed["metrics"]["test_acc"] if same else None,
              "committed_git_sha": committed["git_sha"] if same else None}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / f"{profile}_{table}_{setting}_seed{seed}.json", report)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None, help="default: base.profile of the params file")
    parser.add_argument("--table", default="table1", choices=sorted(tables.TABLES))
    parser.add_argument("--setting", default="mnist_1pct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe", type=int, default=512, help="train originals in the probe batch")
    parser.add_argument("--out", default="reports/influence_encoder_probe")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    params = load_params(args.params)
    profile = args.profile or params["base"]["profile"]
    mirror = data_mirror(params["base"])
    try:
        report = run(params, profile, args.table, args.setting, args.seed, Path(args.out), probe_size=args.probe,
                     mirror=mirror)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    for r in report["rounds"]:
        print(f"round at epoch {r['epoch']}: I_aug {r['i_aug_first']:.3g} -> {r['i_aug_last']:.3g}; tau saturated "
              f"{r['tau_saturated']:.0%}, std over batch {r['tau_std_over_batch']:.3f}; F acc original / E / prior "
              f"{r['original']['acc']:.1f} / {r['encoder']['acc']:.1f} / {r['prior']['acc']:.1f}")
    print(f"test acc {report['test_acc']} (committed: {report['committed_test_acc']}); wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
