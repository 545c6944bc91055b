"""influence tables as data (*Learning to Augment Influential Data*, ICLR 2019 submission): definitions,
run configs, the split + transformation-model preparation and one run.

Table 1: MNIST with 1% / 10% of the labels, the four-layer all-convolutional CNN (Ratner et al.'s setup,
5,000 validation images); Table 2: CIFAR-10 with 10% / 100% of the labels, ResNet-56 (paper profile).
Methods `none`, `heuristic`, `proposed` (papers/influence/training.py). A setting is `<dataset>_<k>pct`; its
block gives `train_per_class` (null: every train image outside the validation pool). Ratner et al.'s rows are
quoted in paper_tables.yaml and not run. G is trained once per data set (`prepare_split` of a `proposed`
config; cached as splits/<profile>/influence/transforms/<dataset>_<hash>.pt, the prepare stage's output) and
only `proposed` configs carry its params, so changing G never invalidates `none`/`heuristic` results.
Every choice the paper leaves open: papers/influence/README.md.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import model_validator

from common.config import config_hash
from common.config_models import (
    Block,
    Bool,
    Float,
    List,
    Mapping,
    NonNegFloat,
    NonNegInt,
    OptionalPosInt,
    PosFloat,
    PosInt,
    Str,
    TableBlock,
    Value,
    fail,
    parse,
    require,
    table_context,
)
from common.data.cifar10 import load_cifar10
from common.data.mirror import cache_dir
from common.data.mnist import load_mnist
from common.data.subsample import PROTOCOLS, SplitSpec, dev_pool_rows, load_or_make_split, split_data_seed
from common.errors import ConfigError
from common.io import sha256_file, write_file_atomic
from common.train.batches import ArrayData
from common.train.checkpoint import RunCheckpoint
from common.train.device import resolve_device
from common.train.loop import fit_with_dev_selection
from papers.influence import transforms
from papers.influence.heuristic import OPS
from papers.influence.models import MNIST_MOMENTS, build_classifier
from papers.influence.training import METHODS, AugmentStep, StepSchedule
from papers.influence.transforms import ARCHS, Encoder, Generator, fit_generator

PAPER = "influence"
NUM_CLASSES = 10
LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}
SELECTIONS = ("last", "best_dev")


@dataclass(frozen=True)
class TableDef:
    settings: tuple[str, ...]
    methods: tuple[str, ...]
    title: str


TABLES = {
    "table1": TableDef(("mnist_1pct", "mnist_10pct"), METHODS,
                       "MNIST accuracy with 1% and 10% of the labels, four-layer all-conv CNN (Table 1)"),
    "table2": TableDef(("cifar10_10pct", "cifar10_100pct"), METHODS,
                       "CIFAR-10 accuracy with 10% and 100% of the labels, ResNet-56 (Table 2)"),
}
DATASET = {"table1": "mnist", "table2": "cifar10"}


# ------------------------------------------------------------------------------------------ params
class Setting(Block):
    train_per_class: OptionalPosInt            # labelled train images per class; null: all outside the dev pool
    epochs: PosInt = None                      # overrides the table's epochs (1% of the labels: few steps an epoch)


class Affine(Block):
    """The random affine flows the flow critic sees as real (transforms.random_affine_flow)."""
    rotation_deg: NonNegFloat
    scale: Float(ge=0, lt=1)
    shear: NonNegFloat
    translation: NonNegFloat


class Transform(Block):
    """G's WGAN-GP training (Sec. 4.3, Appendix B), once per data set."""
    pool_kernel: PosInt
    images: OptionalPosInt                     # the first n train-pool images, labels unused; null: all
    steps: PosInt                              # G steps
    critic_steps: PosInt
    batch_size: PosInt
    lr: PosFloat
    betas: List(Value((float,), ge=0, lt=1), min_len=2)
    gp_weight: NonNegFloat
    anti_identity_weight: NonNegFloat
    anti_identity_eps: PosFloat
    seed: NonNegInt
    affine: Affine

    @model_validator(mode="after")
    def _odd(self):
        if self.pool_kernel % 2 == 0:
            fail("pool_kernel", f"expected an odd kernel (same-size average pooling), got {self.pool_kernel}")
        return self


class EncoderCfg(Block):
    """Alg. 1's encoder rounds (training.AugmentStep): `rounds` rounds, evenly spaced after the first
    `warmup_fraction` of the epochs (so one block serves settings with different epoch counts)."""
    warmup_fraction: Float(ge=0, lt=1)
    rounds: PosInt
    steps: PosInt
    batch_size: PosInt
    lr: PosFloat
    betas: List(Value((float,), ge=0, lt=1), min_len=2)
    damping: Float()

    @model_validator(mode="after")
    def _damping(self):
        if not self.damping > 0:
            fail("damping", f"expected a number > 0, got {self.damping!r}: the softmax top-layer Hessian of F is "
                            "singular (shifting every logit alike leaves the loss unchanged) and a negative damping "
                            "makes H + damping*I indefinite; use e.g. 0.01")
        return self


class InfluenceTable(TableBlock):
    seeds: PosInt
    protocol: Str(choices=PROTOCOLS)
    data_seed: NonNegInt
    dev_per_class: PosInt                      # z^val of the influence (and the monitored dev accuracy)
    dev_pool_size: PosInt                      # the last dev_pool_size train rows; dev is drawn there
    test_limit: OptionalPosInt = None
    dev_monitor: OptionalPosInt = None         # per-epoch dev accuracy on n evenly spaced dev images (null: all)
    arch: Str()
    batch_size: PosInt
    epochs: PosInt
    optimizer: Str(choices=("adam", "sgd"))
    lr: PosFloat
    betas: List(Value((float,), ge=0, lt=1), min_len=2) = None
    momentum: Float(ge=0, lt=1) = None
    weight_decay: NonNegFloat
    milestones: List(Value((int,), ge=1), unique=True)
    lr_decay: Float(gt=0, le=1)
    selection: Str(choices=SELECTIONS)
    crop_pad: NonNegInt
    flip: Bool()
    heuristic_ops: List(Value((str,), choices=tuple(OPS), noun="heuristic op"), unique=True, min_len=1) = None
    heuristic_length: PosInt = None
    transform: Transform = None
    encoder: EncoderCfg = None
    methods: List(Value((str,)), unique=True, min_len=1)
    settings: dict[str, Setting]
    not_run: Mapping(Value((str,))) = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.arch != "cnn4" and not (self.arch.startswith("resnet") and self.arch[6:].isdigit()
                                        and int(self.arch[6:]) >= 8 and (int(self.arch[6:]) - 2) % 6 == 0):
            fail("arch", f"expected 'cnn4' or 'resnet<6n+2>' (e.g. resnet20, resnet56), got {self.arch!r}")
        shortest = min([self.epochs, *(s.epochs for s in self.settings.values() if s.epochs)])
        if self.milestones != sorted(self.milestones) or (self.milestones and self.milestones[-1] >= shortest):
            fail("milestones", f"expected increasing epochs < epochs ({shortest}), got {self.milestones}")
        require(self, ["betas"] if self.optimizer == "adam" else ["momentum"],
                needed_by=[f"optimizer {self.optimizer}"])
        if "heuristic" in self.methods:
            require(self, ["heuristic_ops", "heuristic_length"], needed_by=["heuristic"])
        if "proposed" in self.methods:
            require(self, ["transform", "encoder"], needed_by=["proposed"])
        return self


def table_model(table: str, cfg: dict, where: str) -> InfluenceTable:
    if table not in TABLES:
        raise ConfigError(f"{where}: unknown influence table {table!r}; known: {sorted(TABLES)}")
    return parse(InfluenceTable, cfg, where, table_context(table, TABLES[table]))


def validate_table_config(table: str, cfg: dict, where: str) -> None:
    table_model(table, cfg, where)


# ------------------------------------------------------------------------------------- run configs
def run_configs(table: str, cfg: dict, profile: str) -> list[dict[str, Any]]:
    """Every (setting, method, seed) run; per setting the `proposed` configs come first, so `repro prepare`
    (one prepare_split call per split file) meets a config that carries G's params and fits G."""
    model = table_model(table, cfg, f"{PAPER}.profiles.{profile}.{table}")
    methods = sorted(model.methods, key=lambda m: m != "proposed")
    return [run_config(table, setting, method, seed, model, profile)
            for setting in model.settings for method in methods for seed in range(model.seeds)]


def run_config(table: str, setting: str, method: str, seed: int, cfg: InfluenceTable, profile: str) -> dict:
    per_class = cfg.settings[setting].train_per_class
    epochs = cfg.settings[setting].epochs or cfg.epochs
    optimizer = {"name": cfg.optimizer, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                 **({"betas": list(cfg.betas)} if cfg.optimizer == "adam" else {"momentum": cfg.momentum})}
    config = {
        "paper": PAPER, "table": table, "setting": setting, "method": method, "seed": seed, "profile": profile,
        "dataset": DATASET[table], "arch": cfg.arch, "protocol": cfg.protocol,
        "data_seed": split_data_seed(cfg.protocol, cfg.data_seed, seed), "classes": list(range(NUM_CLASSES)),
        "train_counts": None if per_class is None else [per_class] * NUM_CLASSES,
        "dev_per_class": cfg.dev_per_class, "dev_pool_size": cfg.dev_pool_size, "test_limit": cfg.test_limit,
        "dev_monitor": cfg.dev_monitor, "batch_size": cfg.batch_size, "epochs": epochs, "optimizer": optimizer,
        "milestones": list(cfg.milestones), "lr_decay": cfg.lr_decay, "selection": cfg.selection,
    }
    if method != "none":
        config.update(crop_pad=cfg.crop_pad, flip=cfg.flip)
    if method == "heuristic":
        config.update(heuristic_ops=list(cfg.heuristic_ops), heuristic_length=cfg.heuristic_length)
    if method == "proposed":
        config.update(transform={**cfg.transform.model_dump(), "dataset": DATASET[table],
                                 "dev_pool_size": cfg.dev_pool_size},
                      encoder=cfg.encoder.model_dump())
    return config


def resolve_requirements(config: dict, deps: list[dict]) -> dict:
    return config            # no influence run is sized from another's results


def run_cost(method: str) -> int:
    """Cheaper runs first within a seed: none (B images per step), heuristic (2B), proposed (2B + E rounds)."""
    return METHODS.index(method)


# -------------------------------------------------------------------------------------------- data
def _dataset(config: dict, mirror: str | None) -> dict:
    return LOADERS[config["dataset"]](mirror)


def _spec(config: dict, train_labels: np.ndarray) -> SplitSpec:
    counts = config["train_counts"]
    if counts is None:
        reserved = dev_pool_rows(train_labels, "train_tail", config["dev_pool_size"])
        counts = [int(n) for n in np.bincount(train_labels[~reserved], minlength=NUM_CLASSES)]
    return SplitSpec(config["dataset"], tuple(config["classes"]), tuple(counts), config["dev_per_class"],
                     config["dev_pool_size"], config["test_limit"])


def _moments(x_nhwc: np.ndarray, dataset: str) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the official train pixels in [0, 1] (exact, from 256-bin histograms)."""
    if dataset == "mnist":
        return list(MNIST_MOMENTS[0]), list(MNIST_MOMENTS[1])
    levels = np.arange(256, dtype=np.float64) / 255
    means, stds = [], []
    for c in range(x_nhwc.shape[-1]):
        counts = np.bincount(x_nhwc[..., c].ravel(), minlength=256).astype(np.float64)
        mean = float((counts * levels).sum() / counts.sum())
        means.append(mean)
        stds.append(float(math.sqrt((counts * (levels - mean) ** 2).sum() / counts.sum())))
    return means, stds


def _nchw(x: np.ndarray, idx) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x[np.asarray(idx, dtype=np.int64)])).permute(0, 3, 1, 2).contiguous()


def transform_path(config: dict, split_path) -> Path:
    """Where G of a data set is cached: beside the table folders of the split directory. The name hashes G's
    params and the code that defines and trains it (transforms.py), so an edited G is refitted, never reused."""
    key = {**config["transform"], "code_sha256": sha256_file(Path(transforms.__file__))}
    name = f"{config['transform']['dataset']}_{config_hash(key)[:8]}.pt"
    root = Path(split_path).parents[1] if split_path else cache_dir() / "influence"
    return root / "transforms" / name


def load_or_fit_generator(config: dict, data: dict, split_path) -> tuple[Generator, dict]:
    """G of the config's data set: the cached file if present (its stored config must match), else fit and cache."""
    cfg = config["transform"]
    path = transform_path(config, split_path)
    arch = ARCHS[cfg["dataset"]]
    if path.exists():
        saved = torch.load(path, weights_only=True)
        if saved.get("config") != cfg:
            raise ConfigError(f"{path}: cached transformation model was trained with other params; delete it to refit")
        info = saved["info"]
    else:
        train_x, train_y = data["train"]
        pool = np.flatnonzero(~dev_pool_rows(train_y, "train_tail", cfg["dev_pool_size"]))
        pool = pool[: cfg["images"]] if cfg["images"] else pool
        images = _nchw(train_x, pool).float() / 255
        t0 = time.perf_counter()
        g, info = fit_generator(images, cfg, seed=cfg["seed"])
        info = {**info, "images": len(pool), "fit_seconds": time.perf_counter() - t0}
        saved = {"config": cfg, "info": info, "state_dict": g.state_dict()}
        write_file_atomic(path, lambda tmp: torch.save(saved, tmp))
    g = Generator(arch, cfg["pool_kernel"])
    g.load_state_dict(saved["state_dict"])
    return g.eval().requires_grad_(False), {"path": path.name, "sha256": sha256_file(path), **info}


def prepare_split(config: dict, mirror: str | None, split_path) -> None:
    """Write (or check) the split index file of one run and, for `proposed`, fit (or check) G (the prepare stage)."""
    data = _dataset(config, mirror)
    train_y, test_y = data["train"][1], data["test"][1]
    load_or_make_split(split_path, train_y, test_y, _spec(config, train_y), config["data_seed"])
    if config["method"] == "proposed":
        load_or_fit_generator(config, data, split_path)


def load_split(config: dict, data: dict, split_path=None):
    """(train uint8 [N, C, H, W], dev and test float in [0, 1]) and the per-channel pixel mean/std."""
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    split = load_or_make_split(split_path, train_y, test_y, _spec(config, train_y), config["data_seed"])

    def take(x, y, idx, uint8=False):
        images = _nchw(x, idx)
        return ArrayData(images if uint8 else images.float() / 255,
                         torch.from_numpy(np.asarray(y[np.asarray(idx, dtype=np.int64)], dtype=np.int64)))

    mean, std = _moments(train_x, config["dataset"])
    return (take(train_x, train_y, split["train"], uint8=True), take(train_x, train_y, split["dev"]),
            take(test_x, test_y, split["test"]), mean, std)


def _optimizer(model, opt: dict) -> torch.optim.Optimizer:
    if opt["name"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]),
                                weight_decay=opt["weight_decay"])
    return torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])


# ----------------------------------------------------------------------------------------- one run
def execute(config: dict, mirror: str | None, on_epoch: Callable[[dict], None] | None = None,
            split_path=None, device: str = "auto", checkpoint_path=None, on_round=None) -> dict:
    """Run one (table, setting, method, seed); returns metrics and per-epoch history. `on_round(step, row)`
    observes each encoder round of `proposed` (`encoder_probe`); it must not change F, E or any RNG."""
    start = time.time()
    target = resolve_device(device)
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    data = _dataset(config, mirror)
    train, dev, test, mean, std = load_split(config, data, split_path)
    train, dev, test = train.to(target), dev.to(target), test.to(target)
    model = build_classifier(config["arch"], NUM_CLASSES, mean, std).to(target)
    optimizer = _optimizer(model, config["optimizer"])
    schedule = StepSchedule(config["optimizer"]["lr"], config["lr_decay"], config["milestones"],
                            math.ceil(len(train) / config["batch_size"]))
    extra, g, e = {}, None, None
    if config["method"] == "proposed":
        g, extra["transform"] = load_or_fit_generator(config, data, split_path)
        g = g.to(target)
        e = Encoder(ARCHS[config["dataset"]]).to(target)
    step = AugmentStep(config["method"], model, optimizer, schedule, crop_pad=config.get("crop_pad", 0),
                       flip=config.get("flip", False), heuristic_ops=config.get("heuristic_ops", []),
                       heuristic_length=config.get("heuristic_length", 0), seed=1_000_003 * (seed + 1),
                       generator=g, encoder=e, encoder_cfg=config.get("encoder"), train=train, dev=dev,
                       epochs=config["epochs"], on_round=on_round)
    monitor = dev
    if config["dev_monitor"] is not None and config["dev_monitor"] < len(dev):   # evenly spaced: the dev split is
        pick = torch.linspace(0, len(dev) - 1, config["dev_monitor"]).round().long()   # class by class, so this
        monitor = ArrayData(dev.x[pick.to(dev.x.device)], dev.y[pick.to(dev.y.device)])  # keeps it class-balanced
    fit = fit_with_dev_selection(model, train, monitor, test, batch_size=config["batch_size"], epochs=config["epochs"],
                                 step=step, seed_generator=torch.Generator().manual_seed(seed),
                                 min_epochs=config["epochs"] - 1 if config["selection"] == "last" else 0,
                                 on_epoch=on_epoch, stateful={"optimizer": optimizer, "step": step},
                                 checkpoint=RunCheckpoint(checkpoint_path, config_hash(config)))
    return fit.outcome(n_train=len(train), n_dev=len(dev), n_test=len(test), wall_s=time.time() - start,
                       device=str(target), extra_metrics={**step.extra_metrics(), **extra})


# The report hook, as a reference (imported only by `repro report`): G, the encoder rounds, the retraining check.
report_sections = "papers.influence.report_sections:report_sections"

# `repro bench --paper influence --suite speed`: "module:function", imported only when the suite runs.
BENCH_SUITES = {"speed": "papers.influence.bench:run_suite"}
