"""hu19 image tables as data: which settings and methods each table has, and how one run goes.

Table 2: CIFAR-10 low data (40 train + 2 dev per class), ResNet-34, `pretrained` / `not_pretrained`.
Table 4: imbalanced CIFAR-10, class 0 (minority 20/50/100) vs class 1 (1000), 10 dev per class,
test set filtered to the two classes. Hyperparameters come from params.yaml (hu19.profiles).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from common.config import config_hash, without_omitted_defaults
from common.config_models import (
    Block,
    Bool,
    Float,
    List,
    Mapping,
    MetaStep,
    MinorityMajority,
    NonNegFloat,
    NonNegInt,
    OptionalPosInt,
    PosFloat,
    PosInt,
    Str,
    TableBlock,
    Value,
    fail,
    less_than,
    parse,
    require,
    table_context,
)
from common.data import load_dataset
from common.data.subsample import PROTOCOLS, SplitSpec, load_or_make_split, split_data_seed
from common.errors import ConfigError
from common.models import build_image_model
from common.models.resnet import TORCHVISION_RESNETS
from common.train.batches import ArrayData
from common.train.checkpoint import RunCheckpoint
from common.train.device import resolve_device
from common.train.loop import fit_fixed_steps, fit_with_dev_selection
from common.train.steps import weighted_step
from papers.hu19.text_tables import (
    NORMS,
    PERSISTENT_WEIGHTING_KEYS,
    execute_text,
    prepare_text_split,
    text_run_config,
    validate_text_table_config,
)
from papers.hu19.weighting import (
    PERSISTENT_WEIGHT_METHODS,
    MetaStepConfig,
    WeightingConfig,
    WeightingMethod,
)

PAPER = "hu19"
LOOKAHEAD_METHODS = ("ren", *PERSISTENT_WEIGHT_METHODS)


def official_image_meta_step(batch_size: int) -> dict:
    """The official image meta step (weighting/image_classifier.py): per-example steps on an
    eval-mode copy; dev loss at theta' on its always-training `MagicModule`, i.e. with BatchNorm
    statistics of each dev batch (dev loader: train batch size, shuffled)."""
    return {"per_example": "eval", "dev": "train", "dev_batch_size": batch_size}


# Normalisation used by the official code (ToTensor + Normalize with these statistics).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


@dataclass(frozen=True)
class TableDef:
    settings: tuple[str, ...]
    methods: tuple[str, ...]
    title: str


TABLES = {
    "table1": TableDef(("sst5", "imdb", "trec"),
                       ("base", "base_val", "synonym", "fixed_aug", "ours_aug", "ren", "ours_weight",
                        "ours_weight_eq12"),
                       "Low-data text classification (SST-5 40+2, IMDB/TREC 40+5 per class), augmentation "
                       "and weighting"),
    "table2": TableDef(("pretrained", "not_pretrained"), ("base", "base_val", "ren", "ours_weight", "ours_weight_eq12"),
                       "CIFAR-10 low data (40+2 per class), data weighting"),
    "table4": TableDef(("ratio_20", "ratio_50", "ratio_100"),
                       ("base", "base_val", "proportion", "ren", "ours_weight", "ours_weight_eq12"),
                       "Imbalanced CIFAR-10 (class 0 minority vs class 1 x1000), data weighting"),
    "table3": TableDef(("ratio_20", "ratio_50", "ratio_100"), ("base", "base_val", "proportion", "ren", "ours_weight",
                                                             "ours_weight_eq12", "ours_aug"),
                       "Imbalanced SST-2 (label 0 minority vs label 1 x1000), data weighting"),
}
TEXT_TABLES = ("table1", "table3")
IMAGE_DATASETS = ("cifar10",)          # the image runs normalise with CIFAR-10's statistics



class ImageWeighting(Block):
    """`weighting` of an image table (w_init, w_decay, norm, softmax_temp: needed by ours_weight*)."""

    pretrain_epochs: NonNegInt = 0
    w_init: PosFloat = None
    w_decay: PosFloat = None
    norm: Str(choices=NORMS) = None
    softmax_temp: PosFloat = None


class ImageSetting(Block):
    """One entry of an image table's `settings`: overrides of the table's values."""

    pretrained: Bool() = False
    minority: PosInt = None            # table4: train examples of the minority class
    w_decay: PosFloat = None           # overrides weighting.w_decay


class ImbalancedImageSetting(ImageSetting):
    minority: PosInt


class ImageTable(TableBlock):
    """An image table of hu19.profiles.<profile> (table2)."""

    seeds: PosInt
    dataset: Str(choices=IMAGE_DATASETS)
    protocol: Str(choices=PROTOCOLS)
    data_seed: NonNegInt
    arch: Str(choices=TORCHVISION_RESNETS)
    batch_size: PosInt
    epochs: PosInt
    min_epochs: NonNegInt = 0
    lr: PosFloat
    momentum: Float(ge=0, lt=1)
    weight_decay: NonNegFloat
    train_per_class: PosInt
    dev_per_class: PosInt
    dev_pool_size: PosInt
    test_limit: OptionalPosInt = None
    methods: List(Value((str,)), unique=True)
    weighting: ImageWeighting = ImageWeighting()
    settings: dict[str, ImageSetting]
    not_run: Mapping(Value((str,))) = Field(default_factory=dict)
    meta_step: MetaStep = MetaStep()

    @model_validator(mode="after")
    def _consistent(self):
        less_than("min_epochs", self.min_epochs, "epochs", self.epochs)
        if self.dev_pool_size < self.dev_per_class:
            fail("dev_pool_size", f"expected >= dev_per_class ({self.dev_per_class}), got {self.dev_pool_size}")
        weighted = sorted(set(PERSISTENT_WEIGHT_METHODS) & set(self.methods))
        if weighted:
            require(self.weighting, PERSISTENT_WEIGHTING_KEYS, "weighting", weighted)
        return self


class ImbalancedImageTable(ImageTable):
    """table4: `classes` [minority, majority] and a `minority` count per setting."""

    classes: MinorityMajority("class")
    settings: dict[str, ImbalancedImageSetting]


IMAGE_TABLE_MODELS = {"table2": ImageTable, "table4": ImbalancedImageTable}


def table_model(table: str, cfg: dict, where: str):
    """The typed params block of a table (ConfigError naming `where.<key>` if it is not valid)."""
    if table not in TABLES:
        raise ConfigError(f"{where}: unknown hu19 table {table!r}; known: {sorted(TABLES)}")
    if table in TEXT_TABLES:
        return validate_text_table_config(table, cfg, where, TABLES)
    return parse(IMAGE_TABLE_MODELS[table], cfg, where, table_context(table, TABLES[table]))


def validate_table_config(table: str, cfg: dict, where: str) -> None:
    table_model(table, cfg, where)


def run_configs(table: str, cfg: dict, profile: str) -> list[dict[str, Any]]:
    """Fully resolved config of every (setting, method, seed) run of a table."""
    model = table_model(table, cfg, f"{PAPER}.profiles.{profile}.{table}")
    runs = []
    for setting, override in model.settings.items():
        for method in model.methods:
            for seed in range(model.seeds):
                runs.append(text_run_config(table, setting, method, seed, model, profile) if table in TEXT_TABLES
                            else run_config(table, setting, method, seed, model, override, profile))
    return [without_omitted_defaults(c) for c in runs]


def run_config(table: str, setting: str, method: str, seed: int, cfg: ImageTable, override: ImageSetting,
               profile: str) -> dict[str, Any]:
    weighting = cfg.weighting.given()
    if "w_decay" in override.model_fields_set:
        weighting["w_decay"] = override.w_decay
    if table == "table2":
        classes, counts = list(range(10)), [cfg.train_per_class] * 10
    else:
        classes = list(cfg.classes)
        counts = [override.minority, cfg.train_per_class]
    config = {
        "paper": PAPER, "table": table, "setting": setting, "method": method, "seed": seed, "profile": profile,
        "dataset": cfg.dataset, "protocol": cfg.protocol,
        "data_seed": split_data_seed(cfg.protocol, cfg.data_seed, seed),
        "classes": classes, "train_counts": counts, "dev_per_class": cfg.dev_per_class,
        "dev_pool_size": cfg.dev_pool_size, "test_limit": cfg.test_limit,
        "arch": cfg.arch, "pretrained": bool(override.pretrained),
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "min_epochs": cfg.min_epochs,
        "optimizer": {"name": "sgd", "lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay},
    }
    if method in LOOKAHEAD_METHODS:
        config["pretrain_epochs"] = cfg.weighting.pretrain_epochs
        config["meta_step"] = {**official_image_meta_step(cfg.batch_size), **cfg.meta_step.given()}
    if method in PERSISTENT_WEIGHT_METHODS:
        config["weighting"] = {k: weighting[k] for k in PERSISTENT_WEIGHTING_KEYS}
    if method == "base_val":
        config["requires"] = {"method": "base", "seeds": cfg.seeds}
    return config


def resolve_requirements(config: dict, base_results: list[dict]) -> dict:
    """base_val: train on train+dev for the mean best-dev step count of `base` (hu19 Sec. 5.1)."""
    steps = [r["metrics"]["steps_at_best"] for r in base_results]
    config = dict(config)
    config.pop("requires")
    config["fixed_steps"] = max(1, int(round(float(np.mean(steps)))))
    config["fixed_steps_from"] = {"method": "base", "n": len(steps),
                                  "config_hashes": sorted(r["config_hash"] for r in base_results)}
    return config


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    return ((t - mean) / std).contiguous()


def prepare_split(config: dict, mirror: str | None, split_path) -> None:
    """Write (or check) the split index file of one run (the `prepare` stage)."""
    if config.get("modality") == "text":
        prepare_text_split(config, mirror, split_path)
        return
    data = load_dataset(config["dataset"], mirror)
    spec = SplitSpec(config["dataset"], tuple(config["classes"]), tuple(config["train_counts"]),
                     config["dev_per_class"], config["dev_pool_size"], config["test_limit"])
    load_or_make_split(split_path, data["train"][1], data["test"][1], spec, config["data_seed"])


def load_split(config: dict, mirror: str | None, split_path=None) -> tuple[ArrayData, ArrayData, ArrayData]:
    data = load_dataset(config["dataset"], mirror)
    (train_x, train_y), (test_x, test_y) = data["train"], data["test"]
    spec = SplitSpec(config["dataset"], tuple(config["classes"]), tuple(config["train_counts"]),
                     config["dev_per_class"], config["dev_pool_size"], config["test_limit"])
    split = load_or_make_split(split_path, train_y, test_y, spec, config["data_seed"])
    remap = {c: i for i, c in enumerate(config["classes"])}   # class ids -> 0..C-1

    def take(x, y, idx):
        idx = np.asarray(idx, dtype=np.int64)
        return ArrayData(_to_tensor(x[idx]), torch.tensor([remap[int(v)] for v in y[idx]], dtype=torch.int64))

    return (take(train_x, train_y, split["train"]), take(train_x, train_y, split["dev"]),
            take(test_x, test_y, split["test"]))


def execute(config: dict, mirror: str | None, on_epoch: Callable[[dict], None] | None = None,
            split_path=None, device: str = "auto", checkpoint_path=None) -> dict:
    """Run one (table, setting, method, seed); returns metrics and per-epoch history."""
    if config.get("modality") == "text":
        return execute_text(config, mirror, on_epoch, split_path, device, checkpoint_path)
    start = time.time()
    target = resolve_device(device)
    torch.manual_seed(config["seed"])
    np.random.seed(config["seed"])
    train, dev, test = (d.to(target) for d in load_split(config, mirror, split_path))
    num_classes = len(config["classes"])
    model = build_image_model(config["arch"], num_classes, config["pretrained"]).to(target)
    opt_cfg = config["optimizer"]
    optimizer = torch.optim.SGD(model.parameters(), lr=opt_cfg["lr"], momentum=opt_cfg["momentum"],
                                weight_decay=opt_cfg["weight_decay"])
    generator = torch.Generator().manual_seed(config["seed"])
    method = config["method"]
    checkpoint = RunCheckpoint(checkpoint_path, config_hash(config))

    if method == "base_val":
        merged = ArrayData(torch.cat([train.x, dev.x]), torch.cat([train.y, dev.y]))
        step = WeightingMethod("base", model, optimizer, merged, dev, num_classes, WeightingConfig())
        fit = fit_fixed_steps(model, merged, test, batch_size=config["batch_size"],
                              total_steps=config["fixed_steps"], step=step, seed_generator=generator,
                              on_epoch=on_epoch, stateful={"optimizer": optimizer, "step": step},
                              checkpoint=checkpoint)
    else:
        wcfg = WeightingConfig(**config.get("weighting", {}))
        step = WeightingMethod(method, model, optimizer, train, dev, num_classes, wcfg,
                               MetaStepConfig.from_run_config(config))

        def pretrain(batch):
            return weighted_step(model, optimizer, batch, torch.full((len(batch.y),), 1.0 / len(batch.y)))

        fit = fit_with_dev_selection(model, train, dev, test, batch_size=config["batch_size"],
                                     epochs=config["epochs"], step=step, seed_generator=generator,
                                     pretrain_epochs=config.get("pretrain_epochs", 0), pretrain_step=pretrain,
                                     min_epochs=config["min_epochs"], on_epoch=on_epoch,
                                     stateful={"optimizer": optimizer, "step": step}, checkpoint=checkpoint)
    return fit.outcome(n_train=len(train), n_dev=len(dev), n_test=len(test), wall_s=time.time() - start,
                       device=str(target), extra_metrics=step.extra_metrics())


# Optional hooks of the paper contract (pipelines/papers.py).
RUN_COST = {"base": 0, "proportion": 1, "base_val": 2, "synonym": 2, "ren": 3, "ours_weight": 3,
            "ours_weight_eq12": 3, "fixed_aug": 3, "ours_aug": 4}


def run_cost(method: str) -> int:
    """Cost rank of a method (the grid runs cheaper ranks first within a seed)."""
    return RUN_COST.get(method, 3)


# The contract's report hook, as a reference: the report code is imported only by `repro report`.
report_sections = "papers.hu19.report_sections:report_sections"

# "module:function" references, imported only when `repro bench` runs a suite (so the bench code is
# not a dependency of the run stages); each function takes (params, profile, repeats, out_dir) -> Path.
BENCH_SUITES = {"weighting": "papers.hu19.bench:run_suite", "text": "papers.hu19.bench_text:run_suite"}

