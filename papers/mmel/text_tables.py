"""mmel GLUE tables (Sec. 4.2): Table 3 (dev and test, per method) and Table 4 (teacher vs original labels).

One run = (task, method, seed) of table3; it scores several published cells at once (`metrics.cells`):
Table 3's `dev_<task>` and, where our test set has labels (MRPC: F1, STS-B: Spearman), `test_<task>`
(CoLA and RTE test labels are not public: those rows are NOT RUN), and Table 4's `<task>` (the dev
score) for the MMEL runs with teacher labels and with the original label (`*_original_label`), so
Table 4 costs only the two original-label methods.

A step takes `batch_size` examples with their groups B(x_i) = {x_i} + |B| - 1 greedy-MLM views
(`papers.mmel.text_data`): one forward of all batch_size x |B| sequences in train mode (dropout on),
then the loss of the method:

| method | loss |
|---|---|
| baseline | cross-entropy (STS-B: squared error) of x_i alone, no views |
| da_uni | uniform average over B(x_i) of the loss against each view's label (Eq. 1; Remark 1) |
| mmel_h | Eq. 7, P* of Eq. 6 (`mmel_h_loss`; STS-B `mmel_h_regression_loss`) |
| mmel_s | Eq. 8, P* of Eq. 9 (`mmel_s_loss`; STS-B `mmel_s_regression_loss`, teacher rule of Sec. 4.2) |
| da_long | every view a separate sample (same batch size, |B| x the steps), the long baseline |
| *_original_label | as mmel_h / mmel_s with y_i as every view's label and no teacher (Table 4) |

A view's label is the teacher's output on it (Sec. 3.3), x_i keeps y_i. Choices the paper leaves open
(also in the README): the scores of the last epoch (no selection on dev: dev is what Table 3 reports), the
backbone's dropout (Table 7: {0, 0.1}; we keep 0.1), gradient norm clipping at 1.0. The schedule is Table 7's
(AdamW, batch 32, no weight decay, 10 epochs, linear decay after `warmup` x the steps of linear warm-up: 0 in
the paper profile); the cpu profile's lr and warm-up differ (params.yaml).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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
from common.data.glue_metrics import glue_metrics
from common.errors import ConfigError
from common.text.backbones import BACKBONES, load_tokenizer
from common.text.classifier import build_text_classifier, check_pooling
from common.train.batches import length_groups
from common.train.checkpoint import RunCheckpoint, capture, restore
from common.train.device import resolve_device
from papers.mmel.mmel import (
    da_uni_loss,
    mmel_h_loss,
    mmel_h_regression_loss,
    mmel_s_loss,
    mmel_s_regression_loss,
)
from papers.mmel.text_data import (
    ensure_teacher,
    ensure_views,
    load_task,
    num_outputs,
    teacher_tensor,
    write_split,
)

TEXT_METHODS = ("baseline", "da_uni", "mmel_h", "mmel_s", "da_long", "mmel_h_original_label",
                "mmel_s_original_label")
DEV_METRIC = {"cola": "mcc", "rte": "accuracy", "mrpc": "accuracy", "stsb": "spearman"}   # Sec. 4.2
TEST_METRIC = {"mrpc": "f1", "stsb": "spearman"}      # labelled test sets here (CoLA/RTE: not public)
TABLE4_METHODS = ("mmel_h", "mmel_s", "mmel_h_original_label", "mmel_s_original_label")


class MlmBlock(Block):
    backbone: Str(choices=BACKBONES)
    steps: NonNegInt
    batch_size: PosInt
    lr: PosFloat
    max_seq_len: PosInt
    seed: NonNegInt
    threads: PosInt
    out_dir: Str()


class TaskSetting(Block):
    """A task's entry under `settings`: optional overrides of the table's train_limit / max_seq_len."""

    train_limit: OptionalPosInt = None
    max_seq_len: PosInt = None


class TextTable(TableBlock):
    """mmel.profiles.<profile>.table3: the GLUE runs (settings = tasks)."""

    seeds: PosInt
    data_seed: NonNegInt
    backbone: Str(choices=BACKBONES)
    pooling: Str(choices=("cls", "mean"))
    max_seq_len: PosInt
    train_limit: OptionalPosInt = None         # null: the whole train set
    dev_limit: OptionalPosInt = None           # null: the whole dev set (first rows otherwise)
    test_limit: OptionalPosInt = None
    batch_size: PosInt
    epochs: PosInt
    teacher_epochs: PosInt
    lr: PosFloat
    weight_decay: NonNegFloat
    warmup: Float(ge=0, lt=1)
    dev_every_epoch: Bool() = True            # false: dev scored after the last epoch only (cpu: saves time)
    num_views: PosInt
    mask_ratio: Float(gt=0, le=1)
    views_seed: NonNegInt
    lambda_p: PosFloat
    lambda_t: PosFloat
    mlm: MlmBlock
    methods: List(Value((str,), choices=TEXT_METHODS), unique=True, min_len=1)
    settings: dict[str, TaskSetting]
    not_run: Mapping(Value((str,))) = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        if self.num_views < 2:
            fail("num_views", f"expected >= 2 (x_i and at least one augmented view), got {self.num_views}")
        return self


def table_model(table: str, cfg: dict, where: str, definition) -> TextTable:
    return parse(TextTable, cfg, where, table_context(table, definition))


def run_config(table: str, task: str, method: str, seed: int, cfg: TextTable, profile: str) -> dict[str, Any]:
    check_pooling(cfg.pooling, "pooling")
    config = {"paper": "mmel", "table": table, "setting": task, "method": method, "seed": seed, "profile": profile,
              "task": task, "dataset": f"glue_{task}", "dev_source": "dev_split", "dev_pool_size": 0,
              **{k: getattr(cfg, k) for k in ("data_seed", "backbone", "pooling", "max_seq_len", "train_limit",
                                              "dev_limit", "test_limit", "batch_size", "epochs", "teacher_epochs",
                                              "lr", "weight_decay", "warmup", "dev_every_epoch", "num_views",
                                              "mask_ratio", "views_seed")},
              "mlm": cfg.mlm.model_dump()}
    override = cfg.settings[task]
    config.update({k: getattr(override, k) for k in override.model_fields_set})
    if method.startswith("mmel"):
        config["lambda_p"] = cfg.lambda_p
    if method.startswith("mmel_s"):
        config["lambda_t"] = cfg.lambda_t
    return config


# -------------------------------------------------------------------------------------------- data
def _encode(tokenizer, x: list, max_seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, token_type_ids) int64 [N, max_seq_len]: [CLS] a [SEP] (b [SEP]), truncated, padded."""
    pairs = len(x) > 0 and isinstance(x[0], (tuple, list))
    enc = tokenizer([r[0] for r in x] if pairs else list(x), [r[1] for r in x] if pairs else None,
                    padding="max_length", truncation=True, max_length=max_seq_len, return_tensors="pt")
    return enc["input_ids"].long(), enc["token_type_ids"].long()


def _labels(task: str, y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.float32 if num_outputs(task) == 1 else np.int64))


class TaskData:
    """Token ids of one task: train groups [N, |B|, L] (view 0 = x_i), dev and test [M, L]."""

    def __init__(self, config: dict, mirror: str | None, split_path=None, with_views: bool = True):
        task = config["task"]
        splits = load_task(task, mirror)
        x_all, y_all = splits["train"]
        rows = write_split(split_path, config, len(x_all)) if split_path else None
        if rows is None:
            from papers.mmel.text_data import train_rows
            rows = train_rows(len(x_all), config["train_limit"], config["data_seed"])
        self.x_train = [x_all[i] for i in rows]
        self.y_train = _labels(task, y_all[rows])
        tokenizer = load_tokenizer(config["backbone"])
        self.tokenizer, self.max_seq_len = tokenizer, config["max_seq_len"]
        groups = [[x] for x in self.x_train]
        self.mlm_sha = None
        if with_views:
            views, self.mlm_sha = ensure_views(config, self.x_train, mirror)
            groups = [[x, *v] for x, v in zip(self.x_train, views)]
        flat = [g for group in groups for g in group]
        ids, types = _encode(tokenizer, flat, self.max_seq_len)
        b = len(groups[0])
        self.train_ids, self.train_types = ids.view(len(groups), b, -1), types.view(len(groups), b, -1)
        self.eval = {}
        for split, limit in (("dev", config["dev_limit"]), ("test", config["test_limit"])):
            if split in splits:
                x, y = splits[split]
                x, y = (x[:limit], y[:limit]) if limit else (x, y)
                self.eval[split] = (*_encode(tokenizer, x, self.max_seq_len), np.asarray(y))


def _trimmed(ids: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(int((ids != 0).sum(-1).max()), 1)
    ids, types = ids[..., :width], types[..., :width]
    return ids, types, (ids != 0).long()


def forward(model, ids: torch.Tensor, types: torch.Tensor, max_groups: int = 4) -> torch.Tensor:
    """Outputs [..., C] of token ids [..., L]: the rows run in at most `max_groups` groups of similar
    length, each cut to its longest row (`common.train.batches.length_groups`: the same outputs as one
    padded forward, padding is masked out of attention, for a fraction of the cost)."""
    lead = ids.shape[:-1]
    flat_ids, flat_types = ids.reshape(-1, ids.shape[-1]), types.reshape(-1, types.shape[-1])
    groups = length_groups(flat_ids, max_groups)
    if len(groups) == 1:                          # one group: all rows, in their own order
        groups = [torch.arange(len(flat_ids))]
    parts = []
    for g in groups:
        g_ids, g_types, mask = _trimmed(flat_ids[g], flat_types[g])
        parts.append(model(g_ids, attention_mask=mask, token_type_ids=g_types))
    if len(parts) == 1:
        return parts[0].reshape(*lead, -1)
    out = parts[0].new_empty((len(flat_ids), parts[0].shape[-1]))
    for g, part in zip(groups, parts):
        out = out.index_put((g,), part)          # out of place: differentiable
    return out.reshape(*lead, -1)


@torch.no_grad()
def predict(model, ids: torch.Tensor, types: torch.Tensor, regression: bool, batch_size: int = 256) -> np.ndarray:
    """Eval-mode predictions (class ids, or scores for STS-B), in length order for less padding."""
    was = model.training
    model.eval()
    lengths = (ids != 0).sum(-1)
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(ids), dtype=torch.float32)
    for start in range(0, len(ids), batch_size):
        idx = order[start:start + batch_size]
        logits = forward(model, ids[idx], types[idx])
        out[idx] = logits[:, 0] if regression else logits.argmax(-1).float()
    model.train(was)
    return out.numpy() if regression else out.long().numpy()


@torch.no_grad()
def view_outputs(model, ids: torch.Tensor, types: torch.Tensor, regression: bool, batch_size: int = 256) -> np.ndarray:
    """The teacher's outputs on views [N, V, L]: probabilities [N, V, C] or scores [N, V]."""
    was = model.training
    model.eval()
    n, v = ids.shape[:2]
    flat_ids, flat_types = ids.reshape(n * v, -1), types.reshape(n * v, -1)
    chunks = []
    for start in range(0, n * v, batch_size):
        logits = forward(model, flat_ids[start:start + batch_size], flat_types[start:start + batch_size])
        chunks.append(logits[:, 0] if regression else torch.softmax(logits, -1))
    model.train(was)
    out = torch.cat(chunks)
    return out.view(n, v).numpy() if regression else out.view(n, v, -1).numpy()


def scores(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {k: 100.0 * v for k, v in glue_metrics(task, y, pred).items()}


# ----------------------------------------------------------------------------------------- losses
def method_loss(method: str, task: str, out: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor | None,
                lambda_p: float | None, lambda_t: float | None):
    """(loss, P* weights or None) of one step; out [n, |B|, C] (baseline/da_long: [n, 1, C])."""
    regression = num_outputs(task) == 1
    if method in ("baseline", "da_long"):
        o = out[:, 0]
        if regression:
            return F.mse_loss(o[:, 0], y), None
        return (F.cross_entropy(o, y) if y.dim() == 1 else -(y * F.log_softmax(o, -1)).sum(-1).mean()), None
    original = method.endswith("_original_label")
    kind = method.removesuffix("_original_label")
    if regression:
        preds = out[..., 0]
        if kind == "mmel_s":
            r = mmel_s_regression_loss(preds, y, lambda_p, lambda_t, teacher_preds=None if original else teacher)
        else:
            targets = y if original else torch.cat([y[:, None], teacher], 1)
            r = mmel_h_regression_loss(preds, targets, math.inf if kind == "da_uni" else lambda_p)
        return r.loss, r.weights
    if kind == "mmel_s":
        r = mmel_s_loss(out, y, lambda_p, lambda_t, teacher_probs=None if original else teacher)
        return r.loss, r.weights
    labels = y if original else torch.cat([F.one_hot(y, out.shape[-1]).float()[:, None], teacher], 1)
    r = da_uni_loss(out, labels) if kind == "da_uni" else mmel_h_loss(out, labels, lambda_p)
    return r.loss, r.weights


# ---------------------------------------------------------------------------------------- one run
def _schedule(optimizer, total_steps: int, warmup: float):
    warm = max(1, round(warmup * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total_steps - s) / max(1, total_steps - warm))))


def train_model(config: dict, data: TaskData, method: str, epochs: int, seed: int, teacher: torch.Tensor | None,
                device, on_epoch: Callable[[dict], None] | None = None, checkpoint: RunCheckpoint | None = None):
    """Fine-tune a fresh classifier with `method` for `epochs`; returns (model, history)."""
    task = config["task"]
    regression = num_outputs(task) == 1
    torch.manual_seed(seed)
    model = build_text_classifier(config["backbone"], num_outputs(task), config["max_seq_len"],
                                  pooling=config["pooling"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    n, b = data.train_ids.shape[:2]
    samples = n * b if method == "da_long" else n                       # da_long: every view a sample
    steps_per_epoch = math.ceil(samples / config["batch_size"])
    schedule = _schedule(optimizer, epochs * steps_per_epoch, config["warmup"])
    generator = torch.Generator().manual_seed(seed)
    stateful = {"model": model, "optimizer": optimizer, "schedule": schedule}
    run = {"epoch_done": 0, "history": []}
    saved = checkpoint.load() if checkpoint else None
    if saved is not None:
        restore(saved, stateful, generator)
        run = saved["run"]
    y_onehot = None if regression else F.one_hot(data.y_train, 2).float()
    model.train()
    for epoch in range(run["epoch_done"] + 1, epochs + 1):
        order, losses, weights_max = torch.randperm(samples, generator=generator), [], []
        for start in range(0, samples, config["batch_size"]):
            idx = order[start:start + config["batch_size"]]
            if method == "da_long":
                ex, view = idx // b, idx % b
                out = forward(model, data.train_ids[ex, view][:, None], data.train_types[ex, view][:, None])
                if view.gt(0).any():   # a view's label is the teacher's output, x_i keeps y_i
                    t = teacher[ex, (view - 1).clamp_min(0)]
                    orig = data.y_train[ex].float() if regression else y_onehot[ex]
                    mask = (view == 0).view(-1, *([1] * (t.dim() - 1)))
                    y = torch.where(mask, orig, t)
                else:
                    y = data.y_train[ex]
            else:
                ids, types = data.train_ids[idx], data.train_types[idx]
                if method == "baseline":
                    ids, types = ids[:, :1], types[:, :1]
                out, y = forward(model, ids, types), data.y_train[idx]
            t = None if teacher is None or method == "da_long" else teacher[idx]
            loss, w = method_loss(method, task, out, y, t, config.get("lambda_p"), config.get("lambda_t"))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{task}/{method}: non-finite training loss at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if w is not None:
                weights_max.append(float(w.max(-1).values.mean()))
        row = {"phase": "train", "epoch": epoch, "train_loss": float(np.mean(losses))}
        if config["dev_every_epoch"] or epoch == epochs:
            dev_ids, dev_types, dev_y = data.eval["dev"]
            dev = scores(task, dev_y, predict(model, dev_ids, dev_types, regression))
            row.update(dev_acc=dev[DEV_METRIC[task]], dev=dev)
        if weights_max:
            row["mean_max_weight"] = float(np.mean(weights_max))
        run["history"].append(row)
        run["epoch_done"] = epoch
        if checkpoint:
            checkpoint.save({**capture(stateful, generator), "run": run})
        if on_epoch:
            on_epoch(row)
    return model, run["history"]


def make_teacher(config: dict, data: TaskData, device) -> Callable[[], dict]:
    def train() -> dict:
        regression = num_outputs(config["task"]) == 1
        model, history = train_model(config, data, "baseline", config["teacher_epochs"], 0, None, device)
        return {"outputs": view_outputs(model, data.train_ids[:, 1:], data.train_types[:, 1:], regression),
                "dev_score": history[-1]["dev_acc"]}
    return train


def uses_teacher(method: str) -> bool:
    return method in ("da_uni", "mmel_h", "mmel_s", "da_long")


def prepare(config: dict, mirror: str | None, split_path) -> None:
    """The prepare stage of a GLUE run: its split file, and the task's views and teacher outputs, which
    every method but `baseline` reads (each built once; `repro prepare` visits one config per split)."""
    data = TaskData(config, mirror, split_path, with_views=True)
    ensure_teacher({**config, "n_train": len(data.y_train)}, make_teacher(config, data, resolve_device("auto")),
                   data.mlm_sha)


def execute(config: dict, mirror: str | None, on_epoch=None, split_path=None, device: str = "auto",
            checkpoint_path=None) -> dict:
    start = time.time()
    target = resolve_device(device)
    task, method = config["task"], config["method"]
    if "dev" not in load_task(task, mirror):
        raise ConfigError(f"{task}: no dev split to report")
    data = TaskData(config, mirror, split_path, with_views=method != "baseline")
    teacher, teacher_dev = None, None
    if uses_teacher(method):
        cfg = {**config, "n_train": len(data.y_train)}
        outputs, teacher_dev = ensure_teacher(cfg, make_teacher(config, data, target), data.mlm_sha)
        teacher = teacher_tensor(outputs)
    model, history = train_model(config, data, method, config["epochs"], int(config["seed"]), teacher, target,
                                 on_epoch, RunCheckpoint(checkpoint_path, config_hash(config)))
    regression = num_outputs(task) == 1
    dev = history[-1]["dev"]
    cells = {"table4": {}, "table3": {}}
    if not method.endswith("_original_label"):
        cells["table3"][f"dev_{task}"] = dev[DEV_METRIC[task]]
    if method in TABLE4_METHODS:
        cells["table4"][task] = dev[DEV_METRIC[task]]
    test = {}
    if "test" in data.eval:
        ids, types, y = data.eval["test"]
        test = scores(task, y, predict(model, ids, types, regression))
        if task in TEST_METRIC and not method.endswith("_original_label"):
            cells["table3"][f"test_{task}"] = test[TEST_METRIC[task]]
    metrics = {"test_acc": dev[DEV_METRIC[task]], "dev": dev, "test": test,
               "cells": {t: c for t, c in cells.items() if c}, "n_train": len(data.y_train),
               "n_dev": len(data.eval["dev"][2]), "n_test": len(data.eval["test"][2]) if "test" in data.eval else 0}
    if teacher_dev is not None:
        metrics["teacher_dev"] = teacher_dev
    extra = {"mlm": {"dir": config["mlm"]["out_dir"], "weights_sha256": data.mlm_sha}} if data.mlm_sha else {}
    return {"metrics": metrics, "history": history, "train_s": time.time() - start, "device": str(target), **extra}
