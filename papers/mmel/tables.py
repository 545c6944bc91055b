"""mmel image tables as data (Yi et al., ICLR 2021): definitions, run configs and one run.

Table 1: CIFAR-10/100 x ResNet-20/32/44/56, methods da, da_long, da_uni, mmel_h, mmel_s (|B| = 10).
Table 2: the |B| ablation, MMEL-H/S with |B| in {2, 5, 10, 20} (`mmel_h_b5` = MMEL-H, |B| = 5) beside da.
Table 5 (Appendix B): ImageNet ResNet-18/34/50, da, mmel_h, mmel_s (`paper` profile only).
An image setting is `<dataset>_<arch>`; its name fixes both. Table 3 (GLUE, `papers.mmel.text_tables`):
settings are the tasks; each run also scores its Table 4 cell (paper_tables.yaml: table4 `runs_from:
table3`), so Table 4 has no runs of its own. Hyperparameters come from params.yaml (mmel.profiles).
See papers/mmel/README.md for every choice the paper leaves open.
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from common.config import config_hash
from common.config_models import (
    Block,
    Float,
    Int,
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
from common.data import DATASETS, load_dataset
from common.data.subsample import PROTOCOLS, SplitSpec, dev_pool_rows, load_or_make_split, split_data_seed
from common.errors import ConfigError
from common.models import build_image_model, cifar_resnet
from common.train.batches import ArrayData
from common.train.checkpoint import RunCheckpoint
from common.train.device import resolve_device
from common.train.loop import fit_with_dev_selection
from papers.mmel import text_tables
from papers.mmel.image_step import (
    COMPILE_MODES,
    IMAGE_METHODS,
    ImageMethodStep,
    PixelNormalized,
    StepSchedule,
    channel_moments,
)

PAPER = "mmel"
CIFAR_DEPTHS = (20, 32, 44, 56)
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
ABLATION_VIEWS = (2, 5, 10, 20)
SELECTIONS = ("last", "best_dev")   # test accuracy of the last epoch (the paper) or of the best dev epoch


@dataclass(frozen=True)
class TableDef:
    settings: tuple[str, ...]
    methods: tuple[str, ...]
    title: str


CIFAR_SETTINGS = tuple(f"{ds}_resnet{d}" for ds in ("cifar10", "cifar100") for d in CIFAR_DEPTHS)
ABLATION_METHODS = ("da", *(f"mmel_{kind}_b{k}" for k in ABLATION_VIEWS for kind in ("h", "s")))
TABLES = {
    "table1": TableDef(CIFAR_SETTINGS, IMAGE_METHODS,
                       "CIFAR-10/100 with CIFAR ResNets: DA, DA+Long, DA+UNI, MMEL-H, MMEL-S (|B| = 10)"),
    "table2": TableDef(CIFAR_SETTINGS, ABLATION_METHODS, "MMEL-H/S with |B| in {2, 5, 10, 20} beside DA"),
    "table5": TableDef(tuple(f"imagenet_resnet{d}" for d in (18, 34, 50)), ("da", "mmel_h", "mmel_s"),
                       "ImageNet with ResNet-18/34/50 (Appendix B): DA, MMEL-H, MMEL-S (|B| = 10)"),
    "table3": TableDef(("cola", "rte", "mrpc", "stsb", "sst2", "qqp", "mnli", "qnli"), text_tables.TEXT_METHODS,
                       "GLUE dev and test with BERT (Table 3; also Table 4's teacher vs original labels)"),
}
TEXT_TABLES = ("table3",)
_ABLATION = re.compile(r"mmel_(h|s)_b(\d+)$")


def setting_spec(setting: str) -> tuple[str, str]:
    """(dataset, arch) of a setting name `<dataset>_<arch>`."""
    dataset, _, arch = setting.rpartition("_")
    return dataset, arch


def method_views(method: str, table_views: int | None) -> tuple[str, int]:
    """(image method, |B|) of a table method: `mmel_h_b5` -> (mmel_h, 5); da/da_long use one view."""
    match = _ABLATION.match(method)
    if match:
        return f"mmel_{match.group(1)}", int(match.group(2))
    return method, (1 if method in ("da", "da_long") else int(table_views))


# ------------------------------------------------------------------------------------------ params
class Setting(Block):
    """One entry of a table's `settings`: the name `<dataset>_<arch>` says everything, so no keys."""


class ImageTable(TableBlock):
    """An image table of mmel.profiles.<profile> (the keys every image table has)."""

    seeds: PosInt
    protocol: Str(choices=PROTOCOLS)
    data_seed: NonNegInt
    train_per_class: OptionalPosInt            # null: every train example outside the dev pool
    dev_per_class: NonNegInt
    dev_pool_size: NonNegInt                   # the last `dev_pool_size` train rows; dev is drawn there
    test_limit: OptionalPosInt = None
    batch_size: PosInt
    epochs: PosInt
    milestones: List(Value((int,), ge=1), unique=True)
    lr_decay: Float(gt=0, le=1)
    lr: PosFloat
    momentum: Float(ge=0, lt=1)
    weight_decay: NonNegFloat
    selection: Str(choices=SELECTIONS)
    lambda_p: PosFloat = None                 # Eq. 3-9; needed by mmel_h / mmel_s
    lambda_t: PosFloat = None                 # Eq. 8; needed by mmel_s
    compile: Str(choices=COMPILE_MODES)
    methods: List(Value((str,)), unique=True, min_len=1)
    settings: dict[str, Setting]
    not_run: Mapping(Value((str,))) = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        if self.milestones != sorted(self.milestones):
            fail("milestones", f"expected increasing epochs, got {self.milestones}")
        if self.milestones and self.milestones[-1] >= self.epochs:
            fail("milestones", f"expected every milestone < epochs ({self.epochs}), got {self.milestones}")
        if self.dev_per_class and not self.dev_pool_size:
            fail("dev_pool_size", f"expected >= 1 with dev_per_class {self.dev_per_class} (the dev examples are "
                                  "drawn from the last dev_pool_size train rows), got 0")
        if self.selection == "best_dev" and not self.dev_per_class:
            fail("dev_per_class", "expected >= 1 with selection best_dev (it selects on dev), got 0")
        for key, kinds in (("lambda_p", ("mmel_h", "mmel_s")), ("lambda_t", ("mmel_s",))):
            users = [m for m in self.methods if method_views(m, 2)[0] in kinds]
            if users:
                require(self, [key], needed_by=users)
        return self


class ViewsTable(ImageTable):
    """table1 / table5: one |B| for the table (`num_views`), DA+Long's epoch factor."""

    num_views: Int(ge=2)                      # |B(x_i)|: x_i plus num_views - 1 augmented views
    long_factor: PosInt = None                # da_long: this many times the epochs and milestones

    @model_validator(mode="after")
    def _long(self):
        if "da_long" in self.methods:
            require(self, ["long_factor"], needed_by=["da_long"])
        return self


class AblationTable(ImageTable):
    """table2: |B| comes from each method's name (`mmel_h_b5`)."""


TABLE_MODELS = {"table1": ViewsTable, "table2": AblationTable, "table5": ViewsTable}


def table_model(table: str, cfg: dict, where: str) -> ImageTable:
    if table not in TABLES:
        raise ConfigError(f"{where}: unknown mmel table {table!r}; known: {sorted(TABLES)}")
    return parse(TABLE_MODELS[table], cfg, where, table_context(table, TABLES[table]))


def validate_table_config(table: str, cfg: dict, where: str) -> None:
    if table in TEXT_TABLES:
        text_tables.table_model(table, cfg, where, TABLES[table])
    else:
        table_model(table, cfg, where)


# ------------------------------------------------------------------------------------- run configs
def run_configs(table: str, cfg: dict, profile: str) -> list[dict[str, Any]]:
    """Fully resolved config of every (setting, method, seed) run of a table."""
    where = f"{PAPER}.profiles.{profile}.{table}"
    if table in TEXT_TABLES:
        text = text_tables.table_model(table, cfg, where, TABLES[table])
        return [text_tables.run_config(table, task, method, seed, text, profile)
                for task in text.settings for method in text.methods for seed in range(text.seeds)]
    model = table_model(table, cfg, where)
    return [run_config(table, setting, method, seed, model, profile)
            for setting in model.settings for method in model.methods for seed in range(model.seeds)]


def run_config(table: str, setting: str, method: str, seed: int, cfg: ImageTable, profile: str) -> dict[str, Any]:
    dataset, arch = setting_spec(setting)
    kind, views = method_views(method, getattr(cfg, "num_views", None))
    classes = NUM_CLASSES[dataset]
    factor = cfg.long_factor if kind == "da_long" else 1
    config = {
        "paper": PAPER, "table": table, "setting": setting, "method": method, "seed": seed, "profile": profile,
        "dataset": dataset, "arch": arch, "protocol": cfg.protocol,
        "data_seed": split_data_seed(cfg.protocol, cfg.data_seed, seed),
        "classes": list(range(classes)),
        "train_counts": None if cfg.train_per_class is None else [cfg.train_per_class] * classes,
        "dev_per_class": cfg.dev_per_class, "dev_pool_size": cfg.dev_pool_size, "test_limit": cfg.test_limit,
        "loss": kind, "num_views": views,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs * factor,
        "milestones": [m * factor for m in cfg.milestones], "lr_decay": cfg.lr_decay,
        "optimizer": {"name": "sgd", "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
        "selection": cfg.selection, "compile": cfg.compile,
    }
    if kind in ("mmel_h", "mmel_s"):
        config["lambda_p"] = cfg.lambda_p
    if kind == "mmel_s":
        config["lambda_t"] = cfg.lambda_t
    return config


def resolve_requirements(config: dict, deps: list[dict]) -> dict:
    return config            # no mmel run is sized from another's results


# -------------------------------------------------------------------------------------------- data
def _dataset(config: dict, mirror: str | None) -> dict:
    name = config["dataset"]
    if name not in DATASETS:
        raise ConfigError(f"dataset {name!r} ({config['setting']}): no loader in common/data and no {name} data in "
                          f"the mirror here; registered: {sorted(DATASETS)} (the paper profile's {name} rows "
                          "need one)")
    return load_dataset(name, mirror)


def _spec(config: dict, train_labels: np.ndarray) -> SplitSpec:
    counts = config["train_counts"]
    if counts is None:       # every train row outside the dev pool
        reserved = dev_pool_rows(train_labels, "train_tail", config["dev_pool_size"])
        counts = [int(n) for n in np.bincount(train_labels[~reserved], minlength=len(config["classes"]))]
    return SplitSpec(config["dataset"], tuple(config["classes"]), tuple(counts), config["dev_per_class"],
                     config["dev_pool_size"], config["test_limit"])


def prepare_split(config: dict, mirror: str | None, split_path) -> None:
    """Write (or check) the split index file of one run (the `prepare` stage); for a GLUE run also
    build its views and teacher outputs if missing (`papers.mmel.text_data`)."""
    if config["table"] in TEXT_TABLES:
        text_tables.prepare(config, mirror, split_path)
        return
    data = _dataset(config, mirror)
    train_y, test_y = data["train"][1], data["test"][1]
    load_or_make_split(split_path, train_y, test_y, _spec(config, train_y), config["data_seed"])


def load_split(config: dict, mirror: str | None, split_path=None):
    """(train uint8 [N, C, H, W], dev and test raw-pixel float), and the per-channel pixel mean/std
    of the whole official train set (the normalisation of every run of the data set)."""
    data = _dataset(config, mirror)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    split = load_or_make_split(split_path, train_y, test_y, _spec(config, train_y), config["data_seed"])

    def take(x, y, idx, dtype):
        idx = np.asarray(idx, dtype=np.int64)
        images = torch.from_numpy(np.ascontiguousarray(x[idx])).permute(0, 3, 1, 2).contiguous().to(dtype)
        return ArrayData(images, torch.from_numpy(np.asarray(y[idx], dtype=np.int64)))

    mean, std = channel_moments(train_x)
    return (take(train_x, train_y, split["train"], torch.uint8), take(train_x, train_y, split["dev"], torch.float32),
            take(test_x, test_y, split["test"], torch.float32), mean, std)


def build_model(config: dict, mean: list[float], std: list[float]) -> PixelNormalized:
    classes = len(config["classes"])
    arch = config["arch"]
    if config["dataset"] == "imagenet":
        net = build_image_model(arch, classes)
    else:
        net = cifar_resnet(int(arch.removeprefix("resnet")), classes)
    return PixelNormalized(net, mean, std)


# ----------------------------------------------------------------------------------------- one run
def execute(config: dict, mirror: str | None, on_epoch: Callable[[dict], None] | None = None,
            split_path=None, device: str = "auto", checkpoint_path=None) -> dict:
    """Run one (table, setting, method, seed); returns metrics and per-epoch history."""
    if config["table"] in TEXT_TABLES:
        return text_tables.execute(config, mirror, on_epoch, split_path, device, checkpoint_path)
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
                                weight_decay=opt["weight_decay"])
    schedule = StepSchedule(opt["lr"], config["lr_decay"], config["milestones"],
                            math.ceil(len(train) / config["batch_size"]))
    step = ImageMethodStep(config["loss"], model, optimizer, schedule, num_views=config["num_views"],
                           lambda_p=config.get("lambda_p"), lambda_t=config.get("lambda_t"),
                           view_seed=1_000_003 * (seed + 1), compile_mode=config["compile"])
    fit = fit_with_dev_selection(model, train, dev, test, batch_size=config["batch_size"], epochs=config["epochs"],
                                 step=step, seed_generator=torch.Generator().manual_seed(seed),
                                 min_epochs=config["epochs"] - 1 if config["selection"] == "last" else 0,
                                 on_epoch=on_epoch, stateful={"optimizer": optimizer, "step": step},
                                 checkpoint=RunCheckpoint(checkpoint_path, config_hash(config)))
    return fit.outcome(n_train=len(train), n_dev=len(dev), n_test=len(test), wall_s=time.time() - start,
                       device=str(target), extra_metrics=step.extra_metrics())


# Optional hooks of the paper contract (pipelines/papers.py).
def run_cost(method: str) -> int:
    """Cost rank (cheaper runs first within a seed): images per step, DA+Long's 10x epochs."""
    if method in ("da", "baseline"):
        return 0
    if method == "da_long":
        return 2
    return 1 if method_views(method, 10)[1] <= 5 else 2


# The report hook, as a reference (imported only by `repro report`): training time per method (Table 1).
report_sections = "papers.mmel.report_sections:report_sections"

# `repro bench --paper mmel --suite speed`: "module:function", imported only when the suite runs.
BENCH_SUITES = {"speed": "papers.mmel.bench:run_suite"}
