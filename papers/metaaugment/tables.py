"""MetaAugment tables as data (Zhou et al., AAAI 2021): definitions, run configs and one run.

Table 1: CIFAR-10/100 with WRN-28-10, WRN-40-2 (+ Shake-Shake, PyramidNet: no model here, NOT RUN) and
the cpu stand-in `cifar10_resnet20`; methods baseline, randaugment, metaaugment.
Table 3: Omniglot (15 / 2 / 3 drawings per character) with WRN-28-10, WRN-40-2 and the cpu stand-in.
Table 4: ImageNet ResNet-50/200 (`paper` profile config only: no ImageNet here).
Table 5: the policy-network ablation (metaaugment_ote, metaaugment_ownfe beside metaaugment).
Figure 5: the sampler's eps (Eq. 5) in {0, 0.1, 1.0}: `metaaugment_eps0`, `metaaugment` (the table's
eps, 0.1), `metaaugment_eps1` (uniform op pairs, the policy still weighting); the paper's is
Omniglot WRN-28-10, the cpu profile's CIFAR-10 ResNet-20 (Table 1's recipe).
Table 2: MetaAugment + Multiple Transformations (`metaaugment_mt`: every training image augmented
`transforms_per_sample` = 4 times, all 4 n samples in Eq. 2-4) on CIFAR WRN-28-10 and the cpu stand-in;
AdvAA is quoted only.
A setting is `<dataset>_<arch>`; its name fixes both. Hyperparameters come from params.yaml
(metaaugment.profiles); papers/metaaugment/README.md lists every choice the paper leaves open.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

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
    table_context,
)
from common.data.cifar10 import load_cifar10
from common.data.omniglot import ORIGINAL_SIZE, load_omniglot, per_class_split
from common.errors import ConfigError
from common.io import write_or_check_split_file
from common.models.cifar_resnet import CifarResNet
from common.models.wide_resnet import wide_resnet
from common.train.batches import ArrayData
from common.train.checkpoint import RunCheckpoint
from common.train.device import resolve_device
from common.train.loop import fit_with_dev_selection
from papers.metaaugment.image_step import METHODS, VARIANTS, CosineSchedule, MethodStep, channel_moments
from papers.metaaugment.metaaugment import META_GRADIENTS, TaskNetwork

PAPER = "metaaugment"
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "omniglot": 1623, "imagenet": 1000}
KIND = {"cifar10": "cifar", "cifar100": "cifar", "omniglot": "omniglot", "imagenet": "imagenet"}
SELECTIONS = ("last", "best_dev")   # test accuracy of the last epoch (the paper) or of the best dev epoch
NO_MODEL = ("shakeshake26_2x96d", "shakeshake26_2x112d", "pyramidnet_shakedrop")


@dataclass(frozen=True)
class TableDef:
    settings: tuple[str, ...]
    methods: tuple[str, ...]
    title: str


MAIN_METHODS = ("baseline", "randaugment", "metaaugment")
EPS_METHODS = {"metaaugment_eps0": 0.0, "metaaugment_eps1": 1.0}     # Figure 5: metaaugment with this eps
MT_METHODS = ("metaaugment_mt",)                 # Table 2: metaaugment with transforms_per_sample > 1
ABLATION_METHODS = ("metaaugment_ote", "metaaugment_ownfe", "metaaugment")
TABLES = {
    "table1": TableDef(tuple(f"cifar10_{a}" for a in ("wrn28_10", "wrn40_2", *NO_MODEL, "resnet20"))
                       + tuple(f"cifar100_{a}" for a in ("wrn28_10", "wrn40_2", "shakeshake26_2x96d",
                                                         "pyramidnet_shakedrop")),
                       MAIN_METHODS, "CIFAR-10/100: Baseline, RA (ours), MetaAugment"),
    "table3": TableDef(("omniglot_wrn28_10", "omniglot_wrn40_2", "omniglot_resnet8", "omniglot_resnet20"),
                       MAIN_METHODS, "Omniglot (15/2/3 drawings per character): Baseline, RA (ours), MetaAugment"),
    "table4": TableDef(("imagenet_resnet50", "imagenet_resnet200"), MAIN_METHODS,
                       "ImageNet ResNet-50/200: Baseline, RA (ours), MetaAugment"),
    "table5": TableDef(("cifar10_wrn28_10", "cifar100_wrn28_10", "omniglot_wrn28_10", "cifar10_resnet20",
                        "omniglot_resnet8", "omniglot_resnet20"),
                       ABLATION_METHODS, "Policy network ablation: o.TE / own FE beside MetaAugment (w.TE, share FE)"),
    "table2": TableDef(("cifar10_wrn28_10", "cifar100_wrn28_10", "cifar10_resnet20"), (*MT_METHODS, "metaaugment"),
                       "CIFAR with Multiple Transformations per sample: MetaAugment+MT (AdvAA quoted; one "
                       "transformation per sample: `metaaugment`, usually scored from Table 1/5's runs)"),
    "figure5": TableDef(("omniglot_wrn28_10", "cifar10_resnet20", "omniglot_resnet8"),
                        ("metaaugment_eps0", "metaaugment", "metaaugment_eps1"),
                        "The sampler's eps (Eq. 5): 0, the table's eps (0.1), 1.0 (Figure 5)"),
}
_WRN = re.compile(r"wrn(\d+)_(\d+)$")
_RESNET = re.compile(r"resnet(\d+)$")


def setting_spec(setting: str) -> tuple[str, str]:
    """(dataset, arch) of a setting name `<dataset>_<arch>` (the dataset is the part before the first _)."""
    dataset, _, arch = setting.partition("_")
    return dataset, arch


def build_backbone(dataset: str, arch: str, classes: int) -> torch.nn.Module:
    """The task network of a setting; ConfigError for an architecture common/models does not have."""
    channels = 1 if dataset == "omniglot" else 3
    wrn, resnet = _WRN.match(arch), _RESNET.match(arch)
    if wrn:
        return wide_resnet(int(wrn.group(1)), int(wrn.group(2)), classes, in_channels=channels)
    if resnet and dataset != "imagenet":
        return CifarResNet(int(resnet.group(1)), classes, in_channels=channels)
    raise ConfigError(f"arch {arch!r} ({dataset}_{arch}): no such model in common/models (WRN-d-k as wrn<d>_<k>, "
                      "CIFAR ResNets as resnet<depth>)")


# ------------------------------------------------------------------------------------------ params
class Setting(Block):
    """One entry of a table's `settings`: the name `<dataset>_<arch>` fixes data and model; a table
    mixing data sets may override `dev_per_class` per setting (CIFAR-100: 10 x 100 = 1,000)."""

    dev_per_class: OptionalPosInt = None


class MetaTable(TableBlock):
    """A table of metaaugment.profiles.<profile>."""

    seeds: PosInt
    data_seed: NonNegInt
    train_per_class: OptionalPosInt            # null: every image of the class not held out as validation
    dev_per_class: PosInt                      # the validation set of Eq. 3 (CIFAR: 100 x 10 = 1,000, the paper)
    test_per_class: OptionalPosInt = None      # Omniglot: test drawings per character (3); CIFAR: official test set
    classes_limit: OptionalPosInt = None       # the first n classes only (smoke)
    test_limit: OptionalPosInt = None          # the first n test images only (smoke)
    image_size: OptionalPosInt = None          # Omniglot side length (105 = original; null: 105)
    batch_size: PosInt
    epochs: PosInt
    lr: PosFloat
    momentum: Float(ge=0, lt=1)
    nesterov: Bool()
    weight_decay: NonNegFloat
    selection: Str(choices=SELECTIONS)
    baseline_cutout: Bool() = False
    cutout_size: PosInt = 16
    eps: Float(kinds=(int, float), ge=0, le=1) = None      # Eq. 5
    sampler_every_epochs: PosInt = None                     # s = this x steps per epoch (Algorithm 1)
    sampler_window_epochs: PosInt = None                    # r = this x steps per epoch (Eq. 5)
    policy_lr: PosFloat = None                              # beta of Eq. 3
    policy_momentum: Float(ge=0, lt=1) = None
    policy_weight_decay: NonNegFloat = None
    alpha_init: PosFloat = None                             # alpha^(0) of Eq. 2
    val_batch_size: PosInt = None                           # n_val of Eq. 3
    meta_gradient: Str(choices=META_GRADIENTS) = "jvp"
    transforms_per_sample: PosInt = 4                       # Table 2's MT (metaaugment_mt only)
    methods: List(Value((str,)), unique=True, min_len=1)
    settings: dict[str, Setting]
    not_run: Mapping(Value((str,))) = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        meta = [m for m in self.methods if m in VARIANTS or m in EPS_METHODS or m in MT_METHODS]
        for key in ("eps", "sampler_every_epochs", "sampler_window_epochs", "policy_lr", "policy_momentum",
                    "policy_weight_decay", "alpha_init", "val_batch_size"):
            if meta and getattr(self, key) is None:
                fail(key, f"missing (expected a number; needed by {', '.join(meta)})")
        for setting in self.settings:
            dataset, arch = setting_spec(setting)
            if dataset != "imagenet" and not (_WRN.match(arch) or _RESNET.match(arch)):
                fail(f"settings.{setting}", f"no model for {arch!r} in common/models; list the setting under not_run")
            if dataset == "omniglot" and self.test_per_class is None:
                fail("test_per_class", f"missing (expected int; Omniglot's test drawings per character, {setting})")
        if self.image_size is not None and self.image_size > ORIGINAL_SIZE:
            fail("image_size", f"expected <= {ORIGINAL_SIZE} (Omniglot's original size), got {self.image_size}")
        return self


def table_model(table: str, cfg: dict, where: str) -> MetaTable:
    if table not in TABLES:
        raise ConfigError(f"{where}: unknown metaaugment table {table!r}; known: {sorted(TABLES)}")
    return parse(MetaTable, cfg, where, table_context(table, TABLES[table]))


def validate_table_config(table: str, cfg: dict, where: str) -> None:
    table_model(table, cfg, where)


# ------------------------------------------------------------------------------------- run configs
def run_configs(table: str, cfg: dict, profile: str) -> list[dict[str, Any]]:
    """Fully resolved config of every (setting, method, seed) run of a table."""
    model = table_model(table, cfg, f"{PAPER}.profiles.{profile}.{table}")
    return [run_config(table, setting, method, seed, model, profile)
            for setting in model.settings for method in model.methods for seed in range(model.seeds)]


def run_config(table: str, setting: str, method: str, seed: int, cfg: MetaTable, profile: str) -> dict[str, Any]:
    dataset, arch = setting_spec(setting)
    classes = cfg.classes_limit or NUM_CLASSES[dataset]
    config = {
        "paper": PAPER, "table": table, "setting": setting, "method": method, "seed": seed, "profile": profile,
        "dataset": dataset, "arch": arch, "kind": KIND[dataset], "data_seed": cfg.data_seed,
        "num_classes": classes, "train_per_class": cfg.train_per_class,
        "dev_per_class": cfg.settings[setting].dev_per_class or cfg.dev_per_class,
        "test_per_class": cfg.test_per_class if dataset == "omniglot" else None, "test_limit": cfg.test_limit,
        "image_size": (cfg.image_size or ORIGINAL_SIZE) if dataset == "omniglot" else None,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "schedule": "cosine",
        "optimizer": {"name": "sgd", "lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov,
                      "weight_decay": cfg.weight_decay},
        "selection": cfg.selection, "cutout_size": cfg.cutout_size,
    }
    if method == "baseline" and KIND[dataset] == "cifar":
        config["baseline_cutout"] = cfg.baseline_cutout
    if method in VARIANTS or method in EPS_METHODS or method in MT_METHODS:
        step = step_method(method)
        config["policy"] = {"embedding": VARIANTS[step][0], "features": VARIANTS[step][1],
                            "eps": EPS_METHODS.get(method, cfg.eps),
                            "sampler_every_epochs": cfg.sampler_every_epochs,
                            "sampler_window_epochs": cfg.sampler_window_epochs, "lr": cfg.policy_lr,
                            "momentum": cfg.policy_momentum, "nesterov": True,
                            "weight_decay": cfg.policy_weight_decay, "alpha_init": cfg.alpha_init,
                            "val_batch_size": cfg.val_batch_size, "meta_gradient": cfg.meta_gradient}
        if method in MT_METHODS:
            config["policy"]["transforms_per_sample"] = cfg.transforms_per_sample
    return config


def step_method(method: str) -> str:
    """The training step a table method runs (`image_step.METHODS`): Figure 5's eps rows and Table 2's MT
    row are metaaugment (with another eps / transforms_per_sample)."""
    return "metaaugment" if method in EPS_METHODS or method in MT_METHODS else method


def resolve_requirements(config: dict, deps: list[dict]) -> dict:
    return config            # no metaaugment run is sized from another's results


# -------------------------------------------------------------------------------------------- data
def _arrays(config: dict, mirror: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train-pool images NHW[C] uint8, labels, test images, test labels); Omniglot has no official
    test split, so its pool is the whole set (the split draws test drawings from it)."""
    name = config["dataset"]
    if name == "cifar10":
        data = load_cifar10(mirror)
        return (*data["train"], *data["test"])
    if name == "omniglot":
        data = load_omniglot(mirror, config["image_size"])
        return data["x"], data["y"], data["x"], data["y"]
    raise ConfigError(f"dataset {name!r} ({config['setting']}): no loader in common/data and no {name} data in the "
                      "mirror here; the paper profile's CIFAR-100 and ImageNet rows need one (use a cifar10_* or "
                      "omniglot_* setting)")


def split_spec(config: dict) -> dict:
    return {key: config[key] for key in ("dataset", "data_seed", "num_classes", "train_per_class", "dev_per_class",
                                         "test_per_class", "test_limit", "image_size")}


def make_split(config: dict, labels: np.ndarray, test_labels: np.ndarray) -> dict:
    """Row indices {'train', 'dev', 'test'} (`per_class_split` with data_seed): CIFAR draws
    dev_per_class validation images per class and train_per_class (null: all the rest) training
    images; Omniglot draws train/dev/test drawings per character. Classes beyond classes_limit are dropped."""
    classes = config["num_classes"]
    keep = labels < classes
    per_class = int(np.bincount(labels[keep]).min())
    train = config["train_per_class"] or per_class - config["dev_per_class"] - (config["test_per_class"] or 0)
    split = per_class_split(labels, config["data_seed"],
                            (train, config["dev_per_class"], config["test_per_class"] or 0),
                            characters=classes)
    if config["dataset"] != "omniglot":
        split["test"] = [int(i) for i in np.flatnonzero(test_labels < classes)]
    if config["test_limit"] is not None:
        split["test"] = split["test"][: config["test_limit"]]
    return {"spec": split_spec(config), "counts": {k: len(v) for k, v in split.items()}, **split}


def load_or_make_split(config: dict, labels, test_labels, split_path) -> dict:
    record = make_split(config, labels, test_labels)
    if split_path is None:
        return json.loads(json.dumps(record))
    return write_or_check_split_file(Path(split_path), record, differs="prepared split differs from the one drawn "
                                     "now for the same spec and data seed; delete it (and re-run prepare) if the "
                                     "spec changed on purpose")


def prepare_split(config: dict, mirror: str | None, split_path) -> None:
    """Write (or check) the split index file of one run (the `prepare` stage)."""
    _, y, _, test_y = _arrays(config, mirror)
    load_or_make_split(config, y, test_y, split_path)


def load_split(config: dict, mirror: str | None, split_path=None):
    """(train uint8 [N, C, H, W], dev and test raw-pixel float), and the per-channel pixel mean/std of
    the training images of the split."""
    x, y, test_x, test_y = _arrays(config, mirror)
    split = load_or_make_split(config, y, test_y, split_path)

    def take(images, labels, idx, dtype):
        idx = np.asarray(idx, dtype=np.int64)
        part = images[idx]
        part = part[:, None] if part.ndim == 3 else np.ascontiguousarray(part).transpose(0, 3, 1, 2)
        return ArrayData(torch.from_numpy(np.ascontiguousarray(part)).to(dtype),
                         torch.from_numpy(np.asarray(labels[idx], dtype=np.int64)))

    mean, std = channel_moments(x[np.asarray(split["train"], dtype=np.int64)])
    return (take(x, y, split["train"], torch.uint8), take(x, y, split["dev"], torch.float32),
            take(test_x, test_y, split["test"], torch.float32), mean, std)


def build_model(config: dict, mean: list[float], std: list[float]) -> TaskNetwork:
    return TaskNetwork(build_backbone(config["dataset"], config["arch"], config["num_classes"]), mean, std)


# ----------------------------------------------------------------------------------------- one run
def execute(config: dict, mirror: str | None, on_epoch: Callable[[dict], None] | None = None,
            split_path=None, device: str = "auto", checkpoint_path=None) -> dict:
    """Run one (table, setting, method, seed); returns metrics and per-epoch history."""
    start = time.time()
    target = resolve_device(device)
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed)
    train, dev, test, mean, std = load_split(config, mirror, split_path)
    train, dev, test = train.to(target), dev.to(target), test.to(target)
    model = build_model(config, mean, std).to(target)
    opt = config["optimizer"]
    optimizer = torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"],
                                nesterov=opt["nesterov"] and opt["momentum"] > 0, weight_decay=opt["weight_decay"])
    steps_per_epoch = -(-len(train) // config["batch_size"])
    schedule = CosineSchedule(opt["lr"], config["epochs"] * steps_per_epoch)
    kwargs: dict[str, Any] = {"baseline_cutout": config.get("baseline_cutout", False),
                              "cutout_size": config["cutout_size"]}
    policy = config.get("policy")
    if policy:
        extractor = build_model(config, mean, std).to(target) if policy["features"] == "own" else None
        kwargs.update(dev=dev, eps=policy["eps"], sampler_s=policy["sampler_every_epochs"] * steps_per_epoch,
                      sampler_r=policy["sampler_window_epochs"] * steps_per_epoch, policy_lr=policy["lr"],
                      policy_momentum=policy["momentum"], policy_nesterov=policy["nesterov"],
                      policy_weight_decay=policy["weight_decay"], alpha_init=policy["alpha_init"],
                      val_batch_size=policy["val_batch_size"], meta_gradient=policy["meta_gradient"],
                      extractor=extractor, transforms_per_sample=policy.get("transforms_per_sample", 1))
    step = MethodStep(step_method(config["method"]), model, optimizer, schedule, kind=config["kind"],
                      seed=1_000_003 * (seed + 1), **kwargs)
    fit = fit_with_dev_selection(model, train, dev, test, batch_size=config["batch_size"], epochs=config["epochs"],
                                 step=step, seed_generator=torch.Generator().manual_seed(seed),
                                 min_epochs=config["epochs"] - 1 if config["selection"] == "last" else 0,
                                 on_epoch=on_epoch, stateful={"optimizer": optimizer, "step": step},
                                 checkpoint=RunCheckpoint(checkpoint_path, config_hash(config)))
    return fit.outcome(n_train=len(train), n_dev=len(dev), n_test=len(test), wall_s=time.time() - start,
                       device=str(target), extra_metrics=step.extra_metrics())


# Optional hooks of the paper contract (pipelines/papers.py).
def run_cost(method: str) -> int:
    """Cost rank (cheaper runs first within a seed): plain steps, then the bilevel ones (own FE last)."""
    return {"baseline": 0, "randaugment": 0, "metaaugment_ownfe": 2, "metaaugment_mt": 3}.get(method, 1)


# The report hook, as a reference (imported only by `repro report`): Figure 2's learned distribution as numbers.
report_sections = "papers.metaaugment.report_sections:report_sections"

# `repro bench --paper metaaugment --suite speed`: "module:function", imported only when the suite runs.
BENCH_SUITES = {"speed": "papers.metaaugment.bench:run_suite"}

assert set(METHODS) >= set(MAIN_METHODS) | set(ABLATION_METHODS) | {step_method(m) for m in EPS_METHODS}
