"""hu19 text tables as data, and how one text run goes.

Table 1: low-data text classification, SST-5 (40 train + 2 dev per class), IMDB and TREC (40 + 5),
all seven methods. Table 3: imbalanced SST-2, minority label 0 at 20/50/100 vs 1000 majority, 10 dev
per class, weighting methods. Backbone per profile (`common.text`); Adam with weight decay
0.01 except bias/LayerNorm (the official `optim.Adam` with L2 decay, no warm-up).

Schedules, as the official scripts: `base` trains `epochs`; `ren`/`ours_weight` first pretrain
`weighting.pretrain_epochs` plain epochs; the augmentation methods pretrain the classifier
`augmentation.pretrain_epochs` plain epochs, then train `augmentation.epochs` epochs on originals +
one augmented copy each (for CBERT after fitting it `augmentation.cbert_epochs` MLM epochs on the
train set, best dev MLM loss kept).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
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
from common.data import DATASETS, load_dataset
from common.data.subsample import (
    DEV_SOURCES,
    PROTOCOLS,
    SplitSpec,
    load_or_make_split,
    split_data_seed,
)
from common.io import sha256_file
from common.meta.lookahead import PassModes
from common.text.backbones import BACKBONES, encode_texts, load_tokenizer
from common.text.classifier import POOLINGS, build_text_classifier
from common.train.batches import ArrayData, Batch, trim_padding
from common.train.checkpoint import RunCheckpoint
from common.train.device import resolve_device
from common.train.loop import fit_fixed_steps, fit_with_dev_selection
from common.train.optimizers import adam_optimizer, adamw_param_groups
from common.train.steps import weighted_step
from papers.hu19.weighting import (
    PERSISTENT_WEIGHT_METHODS,
    MetaStepConfig,
    WeightingConfig,
    WeightingMethod,
)

PAPER = "hu19"
log = logging.getLogger("repro.hu19.text")
AUGMENTATION_METHODS = ("synonym", "fixed_aug", "ours_aug")
# The official text meta steps (weighting/classifier.py, augmentation/classifier.py): `_get_weights`
# never calls eval(), so per-example gradients and the dev pass at theta' run with dropout; weights
# are computed per sub-batch of 8 (each its own lookahead) and are 1 until Adam has state.
OFFICIAL_TEXT_META_STEP = {"per_example": "train", "dev": "train", "chunk": 8, "uniform_before_adam_state": True}
OFFICIAL_AUG_META_STEP = {"per_example": "train", "dev": "train"}

NORMS = ("softmax", "linear")          # ours_weight normalisation (common.meta.data_weights.normalize)
PERSISTENT_WEIGHTING_KEYS = ("w_init", "w_decay", "norm", "softmax_temp")
TEXT_DATASETS = tuple(name for name in DATASETS if name != "cifar10")
# The augmentation keys each method reads (the run config keeps them).
AUGMENTATION_KEYS = {"synonym": ("pretrain_epochs", "epochs"),
                     "fixed_aug": ("pretrain_epochs", "epochs", "generator_lr", "cbert_epochs", "cbert_batch_size",
                                   "tau"),
                     "ours_aug": ("pretrain_epochs", "epochs", "generator_lr", "cbert_epochs", "cbert_batch_size",
                                  "tau", "n_aug_meta")}


class TextWeighting(Block):
    """`weighting` of a text table (w_init, w_decay, norm, softmax_temp: needed by ours_weight*)."""

    pretrain_epochs: NonNegInt = 0
    min_epochs: NonNegInt = None       # of ren/ours_weight* (default: the table's min_epochs)
    w_init: PosFloat = None
    w_decay: PosFloat = None
    norm: Str(choices=NORMS) = None
    softmax_temp: PosFloat = None


class Augmentation(Block):
    """`augmentation`: schedule of the augmentation methods, CBERT fit and ours_aug's meta step."""

    pretrain_epochs: NonNegInt = None
    epochs: PosInt = None
    generator_lr: PosFloat = None
    cbert_epochs: NonNegInt = None     # 0: the MLM as loaded
    cbert_batch_size: PosInt = None
    n_aug_meta: PosInt = None
    tau: PosFloat = None


class Synonym(Block):
    """`synonym`: the WordNet synonym-replacement baseline."""

    p_replace: Float(ge=0, le=1) = None
    max_replacements: NonNegInt = None
    n_variants: PosInt = None


class TextSetting(Block):
    """One entry of a text table's `settings`: the data of that setting."""

    dataset: Str(choices=TEXT_DATASETS)
    train_per_class: PosInt
    minority: PosInt = None            # table3: train examples of the minority label
    dev_per_class: PosInt
    dev_source: Str(choices=DEV_SOURCES)
    dev_pool_size: NonNegInt = 0
    class_order: List(Value((int,), ge=0), min_len=1, unique=True) = None
    w_decay: PosFloat = None           # overrides weighting.w_decay
    test_sample: OptionalPosInt = None

    @model_validator(mode="after")
    def _dev_pool(self):
        if self.dev_source != "dev_split" and self.dev_pool_size < self.dev_per_class:
            fail("dev_pool_size", f"expected >= dev_per_class ({self.dev_per_class}) with dev_source "
                                  f"{self.dev_source!r}, got {self.dev_pool_size}")
        return self


class ImbalancedTextSetting(TextSetting):
    minority: PosInt


class TextTable(TableBlock):
    """A text table of hu19.profiles.<profile> (table1)."""

    seeds: PosInt
    protocol: Str(choices=PROTOCOLS)
    data_seed: NonNegInt
    backbone: Str(choices=BACKBONES, noun="backbone")
    mlm_dir: Str(nullable=True) = None
    max_seq_len: Int(ge=8)
    batch_size: PosInt
    epochs: PosInt
    min_epochs: NonNegInt = 0
    lr: PosFloat
    weight_decay: NonNegFloat
    test_limit: OptionalPosInt = None
    methods: List(Value((str,)), unique=True)
    weighting: TextWeighting = TextWeighting()
    augmentation: Augmentation = Augmentation()
    synonym: Synonym = Synonym()
    settings: dict[str, TextSetting]
    not_run: Mapping(Value((str,))) = Field(default_factory=dict)
    pooling: Str(choices=POOLINGS) = "cls"
    meta_step: MetaStep = MetaStep()

    @model_validator(mode="after")
    def _consistent(self):
        methods = set(self.methods)
        less_than("min_epochs", self.min_epochs, "epochs", self.epochs)
        weighted = sorted(set(PERSISTENT_WEIGHT_METHODS) & methods)
        if weighted:
            require(self.weighting, PERSISTENT_WEIGHTING_KEYS, "weighting", weighted)
        if methods & {"ren", *PERSISTENT_WEIGHT_METHODS}:
            less_than("weighting.min_epochs", self.weighting.min_epochs, "epochs", self.epochs)
        for key in Augmentation.model_fields:
            users = [m for m, keys in AUGMENTATION_KEYS.items() if m in methods and key in keys]
            if users:
                require(self.augmentation, [key], "augmentation", users)
        if methods & set(AUGMENTATION_METHODS):
            less_than("min_epochs", self.min_epochs, "augmentation.epochs", self.augmentation.epochs)
        if "synonym" in methods:
            require(self.synonym, Synonym.model_fields, "synonym", ["synonym"])
        if methods & {"fixed_aug", "ours_aug"} and self.backbone == "all-MiniLM-L6-v2" and not self.mlm_dir:
            fail("mlm_dir", "all-MiniLM-L6-v2 has no MLM head; set mlm_dir to the output of `repro mlm` "
                            "(dvc stage mlm)")
        return self


class ImbalancedTextTable(TextTable):
    """table3: `classes` [minority, majority] and a `minority` count per setting."""

    classes: MinorityMajority("label")
    settings: dict[str, ImbalancedTextSetting]


TEXT_TABLE_MODELS = {"table1": TextTable, "table3": ImbalancedTextTable}


def validate_text_table_config(table: str, cfg: dict, where: str, tables: dict) -> TextTable:
    """The typed params block of a text table (ConfigError naming `where.<key>` if it is not valid)."""
    return parse(TEXT_TABLE_MODELS[table], cfg, where, table_context(table, tables[table]))


def text_run_config(table: str, setting: str, method: str, seed: int, cfg: TextTable,
                    profile: str) -> dict[str, Any]:
    s = cfg.settings[setting]
    config = {
        "paper": PAPER, "table": table, "setting": setting, "method": method, "seed": seed, "profile": profile,
        "modality": "text", "dataset": s.dataset, "protocol": cfg.protocol,
        "data_seed": split_data_seed(cfg.protocol, cfg.data_seed, seed),
        "dev_per_class": s.dev_per_class, "dev_source": s.dev_source,
        "dev_pool_size": s.dev_pool_size, "class_order": s.class_order,
        "test_limit": cfg.test_limit, "backbone": cfg.backbone, "max_seq_len": cfg.max_seq_len,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "min_epochs": cfg.min_epochs,
        "optimizer": {"name": "adam", "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        # options with a default in common.config.HASH_OMITTED_DEFAULTS: dropped there while default
        "pooling": cfg.pooling, "test_sample": s.test_sample,
    }
    if table == "table3":
        config["classes"] = list(cfg.classes)
        config["train_counts"] = [s.minority, s.train_per_class]
    else:
        config["classes"] = None           # every class of the dataset (resolved at run time)
        config["train_counts_per_class"] = s.train_per_class
    if method in ("ren", *PERSISTENT_WEIGHT_METHODS):
        weighting = cfg.weighting.given()
        config["pretrain_epochs"] = cfg.weighting.pretrain_epochs
        config["min_epochs"] = weighting.get("min_epochs", config["min_epochs"])
        config["meta_step"] = {**OFFICIAL_TEXT_META_STEP, **cfg.meta_step.given()}
        if method in PERSISTENT_WEIGHT_METHODS:
            config["weighting"] = {k: weighting[k] for k in PERSISTENT_WEIGHTING_KEYS}
            if "w_decay" in s.model_fields_set:
                config["weighting"]["w_decay"] = s.w_decay
    if method in AUGMENTATION_METHODS:
        aug = cfg.augmentation
        config["pretrain_epochs"] = aug.pretrain_epochs
        config["epochs"] = aug.epochs
        if method == "synonym":
            config["synonym"] = cfg.synonym.given()
        else:
            config["augmentation"] = {k: getattr(aug, k) for k in ("generator_lr", "cbert_epochs",
                                                                   "cbert_batch_size", "tau")}
            config["mlm_dir"] = cfg.mlm_dir
            if method == "ours_aug":
                config["augmentation"]["n_aug_meta"] = aug.n_aug_meta
                config["meta_step"] = {**OFFICIAL_AUG_META_STEP, **{k: v for k, v in cfg.meta_step.given().items()
                                                                    if k in ("per_example", "dev")}}
    if method == "base_val":
        config["requires"] = {"method": "base", "seeds": cfg.seeds}
    return config


def text_split_spec(config: dict, n_classes: int) -> SplitSpec:
    classes = tuple(config["classes"]) if config["classes"] is not None else tuple(range(n_classes))
    counts = (tuple(config["train_counts"]) if "train_counts" in config
              else (config["train_counts_per_class"],) * len(classes))
    order = tuple(config["class_order"]) if config.get("class_order") else None
    return SplitSpec(config["dataset"], classes, counts, config["dev_per_class"], config["dev_pool_size"],
                     config["test_limit"], dev_source=config["dev_source"], class_order=order,
                     test_sample=config.get("test_sample"))


def prepare_text_split(config: dict, mirror: str | None, split_path: Path | None) -> tuple[dict, dict, SplitSpec]:
    data = load_dataset(config["dataset"], mirror)
    n_classes = int(max(data["train"][1].max(), data["test"][1].max())) + 1
    spec = text_split_spec(config, n_classes)
    dev_labels = data["dev"][1] if spec.dev_source == "dev_split" else None
    split = load_or_make_split(split_path, data["train"][1], data["test"][1], spec, config["data_seed"], dev_labels)
    return data, split, spec


def load_text_split(config: dict, mirror: str | None, tokenizer, split_path=None):
    """(train, dev, test) ArrayData of token ids [N, max_seq_len] (padded with 0) and the train texts."""
    data, split, spec = prepare_text_split(config, mirror, split_path)
    remap = {c: i for i, c in enumerate(spec.classes)}

    def take(texts, labels, idx):
        chosen = [texts[i] for i in idx]
        ids, _ = encode_texts(tokenizer, chosen, config["max_seq_len"])
        return ArrayData(ids, torch.tensor([remap[int(labels[i])] for i in idx], dtype=torch.int64)), chosen

    train, train_texts = take(*data["train"], split["train"])
    dev_source = data["dev"] if spec.dev_source == "dev_split" else data["train"]
    dev, _ = take(*dev_source, split["dev"])
    test, _ = take(*data["test"], split["test"])
    return train, dev, test, train_texts, len(spec.classes)


def _synonym_variants(texts: list[str], labels, cfg: dict, tokenizer, max_seq_len: int, seed: int) -> torch.Tensor:
    from common.augment.synonym import SynonymAugmenter
    augmenter = SynonymAugmenter(cfg["p_replace"], cfg["max_replacements"])
    rng = np.random.default_rng(seed)
    variants = [encode_texts(tokenizer, [augmenter.augment(t, rng) for t in texts], max_seq_len)[0]
                for _ in range(cfg["n_variants"])]
    return torch.stack(variants)


def augmenter_fit_key(config: dict, train: ArrayData, dev: ArrayData, num_labels: int) -> str:
    """Hash of everything a CBERT fit depends on: backbone, MLM weights (file hash), the fit's
    hyperparameters, the seed and the exact train/dev token ids and labels."""
    mlm_dir = config.get("mlm_dir")
    weights = Path(mlm_dir) / "model.safetensors" if mlm_dir else None
    data = hashlib.sha256()
    for tensor in (train.x, train.y, dev.x, dev.y):
        data.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    aug = config["augmentation"]
    return config_hash({"backbone": config["backbone"], "num_labels": num_labels, "seed": config["seed"],
                        "mlm": sha256_file(weights) if weights and weights.is_file() else None,
                        "fit": {k: aug[k] for k in ("cbert_epochs", "cbert_batch_size", "generator_lr")},
                        "data": data.hexdigest()})


def _fit_augmenter(config, classifier_device, train, dev, num_labels, seed, cache_path=None):
    """CBERT fitted on the train set (best dev MLM loss kept) and its fit history. `fixed_aug` and
    `ours_aug` of one (setting, seed) fit the identical augmenter, so the fit (weights, history and
    the global RNG state right after it) is cached at `cache_path` under `augmenter_fit_key`: the
    second run loads it and goes on exactly as if it had fitted it itself (~20 CBERT epochs saved)."""
    from common.augment.cbert import LabelConditionalMLM, fit_cbert
    from common.text.mlm import check_dev_pool_held_out, load_mlm_model
    aug = config["augmentation"]
    check_dev_pool_held_out(config.get("mlm_dir"), config["dataset"], config["dev_source"], config["dev_pool_size"])
    cache = RunCheckpoint(cache_path, augmenter_fit_key(config, train, dev, num_labels)) if cache_path else None
    torch.manual_seed(seed + 1)
    mlm = load_mlm_model(config["backbone"], config.get("mlm_dir"))
    augmenter = LabelConditionalMLM(mlm, num_labels).to(classifier_device)
    saved = cache.load() if cache else None
    if saved is not None:
        augmenter.load_state_dict(saved["augmenter"])
        torch.set_rng_state(saved["torch_rng"])
        log.info("augmenter fit loaded from %s", cache_path)
        return augmenter, saved["history"]
    history = fit_cbert(augmenter, train.x, train.y, dev.x, dev.y, epochs=aug["cbert_epochs"],
                        batch_size=aug["cbert_batch_size"], lr=aug["generator_lr"],
                        generator=torch.Generator().manual_seed(seed + 2))
    if cache:
        cache.save({"augmenter": {k: v.detach().cpu() for k, v in augmenter.state_dict().items()},
                    "history": history, "torch_rng": torch.get_rng_state()})
    return augmenter, history


def augmenter_cache_path(checkpoint_path, seed: int) -> Path | None:
    """Where a setting's CBERT fit of one seed is cached: beside the setting's run checkpoints
    (<checkpoints>/<profile>/hu19/<table>/<setting>/augmenter_fits/seed<k>.pt)."""
    return Path(checkpoint_path).parent.parent / "augmenter_fits" / f"seed{seed}.pt" if checkpoint_path else None


def dev_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad token ids [N, L] with [PAD] (id 0) to `width` columns."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def _trimmed(step):
    """A step that sees each batch with its all-padding columns removed (dynamic padding)."""
    def run(batch: Batch) -> float:
        return step(Batch(trim_padding(batch.x), batch.y, batch.ids))
    return run


def build_step(config: dict, model, optimizer, train: ArrayData, dev: ArrayData, train_texts: list[str],
               num_classes: int, tokenizer, device, extra: dict, augmenter_cache: Path | None = None):
    """(step object, step function) of a training method after pretraining: a WeightingMethod
    (base / ren / ours_weight / proportion) or an AugmentationStep (synonym / fixed_aug / ours_aug,
    whose augmenter is fitted here; its fit history goes to extra["cbert"])."""
    from papers.hu19.augmentation import AugmentationStep

    method, seed = config["method"], config["seed"]
    if method not in AUGMENTATION_METHODS:
        step = WeightingMethod(method, model, optimizer, train, dev, num_classes,
                               WeightingConfig(**config.get("weighting", {})), MetaStepConfig.from_run_config(config))
        return step, _trimmed(step)
    kwargs: dict[str, Any] = {}
    if method == "synonym":
        kwargs["synonym_variants"] = _synonym_variants(train_texts, train.y, config["synonym"], tokenizer,
                                                       config["max_seq_len"], seed)
    else:
        aug_cfg = config["augmentation"]
        augmenter, extra["cbert"] = _fit_augmenter(config, device, train, dev, num_classes, seed, augmenter_cache)
        kwargs.update(augmenter=augmenter, tau=aug_cfg["tau"])
        if method == "ours_aug":
            kwargs.update(augmenter_optimizer=adam_optimizer(adamw_param_groups(augmenter, 0.01),
                                                             lr=aug_cfg["generator_lr"]),
                          dev=(dev.x, dev.y), n_aug_meta=aug_cfg["n_aug_meta"],
                          modes=PassModes(**config["meta_step"]) if "meta_step" in config else None)
    step = AugmentationStep(method, model, optimizer, generator=torch.Generator().manual_seed(seed + 3),
                            trim=trim_padding, **kwargs)
    return step, step


def execute_text(config: dict, mirror: str | None, on_epoch: Callable[[dict], None] | None = None,
                 split_path=None, device: str = "auto", checkpoint_path=None) -> dict:
    """Run one text (table, setting, method, seed); returns metrics and per-epoch history."""
    start = time.time()
    target = resolve_device(device)
    seed, method = config["seed"], config["method"]
    torch.manual_seed(seed)
    np.random.seed(seed)
    tokenizer = load_tokenizer(config["backbone"])
    train, dev, test, train_texts, num_classes = load_text_split(config, mirror, tokenizer, split_path)
    dev = ArrayData(trim_padding(dev.x), dev.y)
    train, dev, test = train.to(target), dev.to(target), test.to(target)
    torch.manual_seed(seed)
    model = build_text_classifier(config["backbone"], num_classes, config["max_seq_len"],
                                  pooling=config.get("pooling", "cls")).to(target)
    opt_cfg = config["optimizer"]
    optimizer = adam_optimizer(adamw_param_groups(model, opt_cfg["weight_decay"]), lr=opt_cfg["lr"])
    generator = torch.Generator().manual_seed(seed)
    checkpoint = RunCheckpoint(checkpoint_path, config_hash(config))
    extra: dict[str, Any] = {}

    def plain(batch: Batch) -> float:
        return weighted_step(model, optimizer, batch, torch.full((len(batch.y),), 1.0 / len(batch.y)))

    if method == "base_val":
        step = None
        merged = ArrayData(torch.cat([train.x, dev_pad(dev.x, train.x.shape[1])]), torch.cat([train.y, dev.y]))
        fit = fit_fixed_steps(model, merged, test, batch_size=config["batch_size"], total_steps=config["fixed_steps"],
                              step=_trimmed(plain), seed_generator=generator, on_epoch=on_epoch,
                              stateful={"optimizer": optimizer}, checkpoint=checkpoint)
    else:
        step, step_fn = build_step(config, model, optimizer, train, dev, train_texts, num_classes, tokenizer,
                                   target, extra, augmenter_cache_path(checkpoint_path, seed))
        epoch_hook = _figure2_hook(step, tokenizer, config, on_epoch, extra) if method == "ours_aug" else on_epoch
        fit = fit_with_dev_selection(model, train, dev, test, batch_size=config["batch_size"],
                                     epochs=config["epochs"], step=step_fn, seed_generator=generator,
                                     pretrain_epochs=config.get("pretrain_epochs", 0), pretrain_step=_trimmed(plain),
                                     min_epochs=config["min_epochs"], on_epoch=epoch_hook,
                                     stateful={"optimizer": optimizer, "step": step}, checkpoint=checkpoint)
    extra_metrics = step.extra_metrics() if isinstance(step, WeightingMethod) else {}
    if config.get("mlm_dir"):     # the identity of the MLM the augmenter started from (reported per table)
        from common.text.mlm import mlm_weights_sha256
        extra["mlm"] = {"dir": config["mlm_dir"], "weights_sha256": mlm_weights_sha256(config["mlm_dir"])}
    return fit.outcome(n_train=len(train), n_dev=len(dev), n_test=len(test), wall_s=time.time() - start,
                       device=str(target), extra_metrics=extra_metrics, **extra)


def _figure2_hook(step, tokenizer, config, on_epoch, extra):
    """Record the augmenter's top-5 substitutions of the hu19 Figure 2 words before joint training
    and after training epochs 1, 3 (the paper's) and the last (SST-5 only: the sentence is an SST
    review). A resumed run records only the epochs it trains after resuming."""
    from common.augment.cbert import (
        FIGURE2_LABEL,
        FIGURE2_SENTENCE,
        FIGURE2_WORDS,
        top_k_substitutions,
    )
    if config["dataset"] != "sst5":
        return on_epoch
    label = FIGURE2_LABEL

    def record(epoch: int) -> None:
        fills = top_k_substitutions(step.augmenter, tokenizer, FIGURE2_SENTENCE, label, FIGURE2_WORDS, k=5)
        extra.setdefault("figure2", {"sentence": FIGURE2_SENTENCE, "label": label})[f"epoch_{epoch}"] = fills

    record(0)   # the fitted CBERT, before joint training (= what fixed_aug uses throughout)

    def hook(row: dict) -> None:
        if row.get("phase") == "train" and row.get("epoch") in (1, 3, config["epochs"]) and "dev_acc" in row:
            record(row["epoch"])
        if on_epoch:
            on_epoch(row)
    return hook
