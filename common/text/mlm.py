"""Masked-LM models of the text backbones (the start of the hu19 CBERT augmenter, `common.augment.cbert`), and
`repro mlm`: training the MLM that all-MiniLM-L6-v2 does not ship (tiny-random-bert: random head;
bert-base-uncased: its own). Training only a fresh head on frozen MiniLM kept predicting frequent
tokens ("the , . of"), so `train_mlm` fine-tunes the whole model. Its corpus (`mlm_corpus`) is train-pool
text only: never an official dev/test split, nor a train-pool row that a table's dev set is drawn from
(the pools are passed in, derived by the caller from the tables' own split definitions, and recorded in
the MLM's report, where `check_dev_pool_held_out` verifies a run's pool before it uses the MLM).
Sentences are truncated to `max_seq_len` tokens, as the classifiers see them; the loss is computed at
the masked positions only (the 30522-way decoder on every position would double the cost).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.errors import ConfigError
from common.io import publish_dir_atomic, sha256_file
from common.run.environment import runtime_environment
from common.text.backbones import (
    ATTN_IMPLEMENTATION,
    BERT_VOCAB_SIZE,
    TINY_CONFIG,
    backbone_dir,
    check_backbone,
    load_tokenizer,
    quiet_transformers,
)
from common.train.batches import PAD_ID
from common.train.optimizers import adamw_param_groups

CLS_ID, SEP_ID, MASK_ID = 101, 102, 103    # bert-base-uncased WordPiece ids ([PAD] = PAD_ID = 0)
FIRST_WORDPIECE_ID = 1000          # ids below are [PAD]/[unusedN]/[UNK]/[CLS]/[SEP]/[MASK] and punctuation
DEV_MASK_SEED = 20190611           # fixed masks of the dev texts (in batches of DEV_BATCH_SIZE, whatever
DEV_BATCH_SIZE = 32                # the training batch size): losses comparable across runs and seeds
MINILM_MLM_DIR = "artifacts/mlm/all-MiniLM-L6-v2"   # params mlm.profiles.cpu.out_dir
PROFILE_OF = {"tiny-random-bert": "smoke", "all-MiniLM-L6-v2": "cpu", "bert-base-uncased": "paper"}
REPORT_NAME = "mlm_report.json"
WEIGHTS_NAME = "model.safetensors"
# One [MASK] each; the last two are the hu19 Figure 2 SST sentence (common.augment.cbert.FIGURE2_SENTENCE)
# with "striking", then "grey" masked.
PROBE_SENTENCES = ("a [MASK] movie with great acting .", "what is the [MASK] of the moon ?",
                   "it 's a [MASK] , grey film .",
                   "although ... visually [MASK] and slickly staged , it 's also cold , grey , antiseptic and "
                   "emotionally desiccated .",
                   "although ... visually striking and slickly staged , it 's also cold , [MASK] , antiseptic and "
                   "emotionally desiccated .")


def mask_tokens(input_ids, attention_mask, generator, prob=0.15, max_predictions=20, mask_id=MASK_ID,
                vocab_size=BERT_VOCAB_SIZE):
    """BERT masking: round(prob * real tokens) per row, clamped to [1, max_predictions], chosen uniformly
    among real tokens (never [CLS]/[SEP]/[PAD] or padding); of those 80% -> [MASK], 10% -> a random
    wordpiece (ids >= 1000), 10% unchanged. Returns (masked_ids, labels: original id where predicted,
    -100 elsewhere). Deterministic given the (CPU) generator."""
    if vocab_size <= FIRST_WORDPIECE_ID:
        raise ValueError(f"vocab_size {vocab_size}: random replacements need ids >= {FIRST_WORDPIECE_ID}")
    device, shape = input_ids.device, input_ids.shape
    real = (attention_mask != 0) & (input_ids != CLS_ID) & (input_ids != SEP_ID) & (input_ids != PAD_ID)
    n_real = real.sum(dim=1)
    n_pred = torch.floor(n_real * prob + 0.5).long().clamp(1, max_predictions).minimum(n_real)
    scores = torch.rand(shape, generator=generator).to(device).masked_fill(~real, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)          # random order of the real tokens first
    chosen = rank < n_pred[:, None]
    action = torch.rand(shape, generator=generator).to(device)
    random_ids = torch.randint(FIRST_WORDPIECE_ID, vocab_size, shape, generator=generator).to(device)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, torch.where(chosen, input_ids, torch.full_like(input_ids, -100))


def _hint(backbone: str) -> str:
    return f"create it with `repro mlm --profile {PROFILE_OF.get(backbone, 'cpu')}` (dvc stage mlm)"


def _from_pretrained(folder: Path, where: str, require_head: bool):
    from transformers import BertForMaskedLM
    try:
        with quiet_transformers():
            model, info = BertForMaskedLM.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                          attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot load the MLM model of {where} ({exc})") from exc
    missing = sorted(k for k in info["missing_keys"] if ".decoder." not in k)   # decoder: tied, not stored
    if require_head and missing:
        raise ConfigError(f"{folder}: not a trained MLM model of {where} (missing {missing[:3]}...); {_hint(where)}")
    if model.cls.predictions.decoder.weight is not model.bert.embeddings.word_embeddings.weight:
        raise RuntimeError(f"{folder}: the MLM decoder weights are not tied to the word embeddings")
    return model


def load_mlm_model(backbone: str, head_dir: Path | str | None = None):
    """The BertForMaskedLM of `backbone` (eager attention, float32, decoder tied to the embeddings).
    `head_dir` (a `train_mlm` output) is required for all-MiniLM-L6-v2 and used for any backbone
    if given; tiny-random-bert without it is random from torch's global RNG (seed it first)."""
    from transformers import BertConfig, BertForMaskedLM
    check_backbone(backbone)
    if head_dir is None:
        if backbone == "tiny-random-bert":
            config = BertConfig(vocab_size=BERT_VOCAB_SIZE, attn_implementation=ATTN_IMPLEMENTATION, **TINY_CONFIG)
            return BertForMaskedLM(config)
        if backbone == "all-MiniLM-L6-v2":
            raise ConfigError(f"all-MiniLM-L6-v2 ships no MLM head: pass the folder trained for it (e.g. "
                              f"{MINILM_MLM_DIR}, params mlm.profiles.cpu.out_dir) as mlm_dir; {_hint(backbone)}")
        return _from_pretrained(backbone_dir(backbone), backbone, require_head=True)
    folder = Path(head_dir)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ConfigError(f"{folder}: no trained MLM model of {backbone} here (config.json + model.safetensors "
                          f"missing); {_hint(backbone)}")
    report = folder / REPORT_NAME
    trained_for = json.loads(report.read_text()).get("backbone") if report.is_file() else backbone
    if trained_for != backbone:
        raise ConfigError(f"{folder}: MLM model of {trained_for!r}, not of {backbone!r}; point mlm_dir at the "
                          f"folder trained for {backbone}")
    return _from_pretrained(folder, backbone, require_head=True)


def top_k_fills(model, tokenizer, sentences, k: int = 5) -> dict[str, list[str]]:
    """{sentence: the k most likely wordpieces at its single [MASK]}."""
    enc = tokenizer(list(sentences), padding=True, return_tensors="pt")
    at_mask = enc["input_ids"] == tokenizer.mask_token_id
    if not torch.equal(at_mask.sum(dim=1), torch.ones(len(sentences), dtype=torch.long)):
        raise ValueError(f"each probe sentence needs exactly one {tokenizer.mask_token}: {list(sentences)}")
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[at_mask]
    model.train(was_training)
    return {s: tokenizer.convert_ids_to_tokens(row) for s, row in zip(sentences, logits.topk(k).indices.tolist())}


def _masked_lm_loss(model, ids, attention_mask, labels, reduction="mean"):
    """Cross-entropy at the predicted positions only (the decoder is not run on the others)."""
    hidden = model.bert(input_ids=ids, attention_mask=attention_mask).last_hidden_state
    predicted = labels != -100
    return F.cross_entropy(model.cls(hidden[predicted]), labels[predicted], reduction=reduction)


def _pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists to the longest: (input_ids, attention_mask) int64."""
    ids = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids, (ids != PAD_ID).long()


def _length_bucketed_batches(lengths: list[int], batch_size: int, generator, bucket: int = 50) -> list[list[int]]:
    """One epoch of batches in random order: shuffled rows, sorted by length within chunks of `bucket`
    batches (less padding: most batches would otherwise pad to the longest, truncated, IMDB review)."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), bucket * batch_size):
        chunk = sorted(order[start:start + bucket * batch_size], key=lengths.__getitem__)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _refuse_overwrite(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise ConfigError(f"{out_dir}: exists and is not empty (a trained MLM model?); delete it, or replace it "
                          "with `repro mlm --overwrite` (train_mlm(..., overwrite=True))")


def mlm_weights_sha256(mlm_dir: str | Path) -> str | None:
    """The identity of an MLM: sha256 of its weights file (None when `mlm_dir` holds none)."""
    weights = Path(mlm_dir) / WEIGHTS_NAME
    return sha256_file(weights) if weights.is_file() else None


def train_mlm(backbone, train_texts, dev_texts, out_dir, *, steps, batch_size=32, lr=1e-4, max_seq_len=64, seed=0,
              threads=2, log_every=50, on_log: Callable[[dict], None] | None = None, overwrite=False,
              report_extra=None) -> dict:
    """Fine-tune the whole BertForMaskedLM of `backbone` with masked LM on `train_texts` for `steps` steps
    (AdamW, decay 0.01 except bias/LayerNorm, 5% linear warm-up then linear decay, clip 1.0); evaluate
    the dev loss (fixed masks) at step 0, every `log_every` steps and at the end; save the best-dev state,
    the tokenizer and `mlm_report.json` (with `weights_sha256`, the MLM's identity, and the library builds
    and CPU it was trained on, `common.run.environment`) atomically to `out_dir`. `steps=0` evaluates
    and saves as is (bert-base-uncased has its own head). Returns the report.

    Bit-reproducible on one CPU kind: `threads` intra-op threads (a CPU matmul's reduction order depends
    on the thread count: another count changes every loss at ~1e-8 from step 0 on) and deterministic
    kernels, both restored afterwards."""
    threads_before, deterministic_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train_mlm(backbone, train_texts, dev_texts, Path(out_dir), steps=steps, batch_size=batch_size, lr=lr,
                          max_seq_len=max_seq_len, seed=seed, threads=threads, log_every=log_every, on_log=on_log,
                          overwrite=overwrite, report_extra=report_extra)
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def _train_mlm(backbone, train_texts, dev_texts, out_dir: Path, *, steps, batch_size, lr, max_seq_len, seed, threads,
               log_every, on_log, overwrite, report_extra) -> dict:
    _refuse_overwrite(out_dir, overwrite)
    if steps < 0 or batch_size < 1 or (steps and not train_texts) or not dev_texts:
        raise ConfigError(f"train_mlm: need steps >= 0, batch_size >= 1, train texts (when steps > 0) and dev "
                          f"texts; got steps={steps}, batch_size={batch_size}, {len(train_texts)} train, "
                          f"{len(dev_texts)} dev texts")
    start = time.time()
    tokenizer = load_tokenizer(backbone)
    torch.manual_seed(seed)                            # the random parts: the MiniLM head, the tiny model
    model = (_from_pretrained(backbone_dir(backbone), backbone, require_head=False)
             if backbone == "all-MiniLM-L6-v2" else load_mlm_model(backbone))
    encode = lambda texts: (tokenizer(list(texts), truncation=True, max_length=max_seq_len)["input_ids"]
                            if len(texts) else [])
    train_rows, dev_rows = encode(train_texts), sorted(encode(dev_texts), key=len)   # sorted: less padding
    dev_generator = torch.Generator().manual_seed(DEV_MASK_SEED)
    dev_batches = []
    for i in range(0, len(dev_rows), DEV_BATCH_SIZE):
        ids, attention = _pad(dev_rows[i:i + DEV_BATCH_SIZE])
        dev_batches.append((*mask_tokens(ids, attention, dev_generator), attention))

    def dev_loss() -> float:
        model.eval()
        with torch.no_grad():
            total = sum(_masked_lm_loss(model, ids, att, labels, "sum").item() for ids, labels, att in dev_batches)
        model.train()
        return total / sum(int((labels != -100).sum()) for _, labels, _ in dev_batches)

    history: list[dict] = []
    log = lambda record: (history.append(record), on_log and on_log(record))
    snapshot = lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}
    best = {"dev_loss": dev_loss(), "step": 0, "state": snapshot() if steps else None}
    dev_loss_before = best["dev_loss"]
    log({"step": 0, "train_loss": None, "dev_loss": dev_loss_before})
    optimizer = torch.optim.AdamW(adamw_param_groups(model, 0.01), lr=lr)
    warmup = max(1, round(0.05 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    generator = torch.Generator().manual_seed(seed)
    batches, losses = [], []
    model.train()
    for step in range(1, steps + 1):
        if not batches:                                # a new epoch
            batches = _length_bucketed_batches([len(row) for row in train_rows], batch_size, generator)
        ids, attention = _pad([train_rows[i] for i in batches.pop()])
        masked, labels = mask_tokens(ids, attention, generator)
        loss = _masked_lm_loss(model, masked, attention, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"train_mlm: non-finite loss at step {step} (lr {lr} too high?)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            log({"step": step, "train_loss": float(np.mean(losses)), "dev_loss": dev_loss()})
            losses = []
            if history[-1]["dev_loss"] < best["dev_loss"]:
                best = {"dev_loss": history[-1]["dev_loss"], "step": step, "state": snapshot()}
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    report = {"backbone": backbone, "steps": steps, "batch_size": batch_size, "lr": lr, "max_seq_len": max_seq_len,
              "seed": seed, "threads": threads, "schedule": "adamw wd 0.01, 5% linear warm-up, linear decay, clip 1.0",
              "n_train_texts": len(train_texts), "n_dev_texts": len(dev_texts), "dev_loss_before": dev_loss_before,
              "dev_loss_best": best["dev_loss"], "step_best": best["step"], "history": history,
              "fills": top_k_fills(model, tokenizer, PROBE_SENTENCES), "environment": runtime_environment(),
              **(report_extra or {})}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        report["weights_sha256"] = mlm_weights_sha256(tmp)
        report["wall_s"] = round(time.time() - start, 1)
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        _refuse_overwrite(out_dir, overwrite)
        publish_dir_atomic(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


DevPools = dict[str, list[tuple[str, int]]]    # dataset -> [(dev_source, dev_pool_size), ...]


def mlm_corpus(mirror, datasets=("sst5", "sst2", "trec", "imdb"), held_out_pools: DevPools | None = None,
               imdb_limit: int | None = 5000, dev_fraction: float = 0.02,
               seed: int = 0) -> tuple[list[str], list[str]]:
    """(train_texts, dev_texts): deduplicated train-pool text of `datasets`, with a seeded `dev_fraction`
    held out as the MLM's dev set. Never used: official dev/test splits (nor any train text equal to one),
    and the train rows of every dev pool in `held_out_pools` (`common.data.subsample.dev_pool_rows`: the
    tables' dev sets come from there). IMDB: `imdb_limit` reviews chosen with a seeded RNG (None: all),
    "<br />" removed. Train texts equal to a held-out text are dropped."""
    from common.data import load_dataset
    from common.data.subsample import dev_pool_rows
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    held_out: set[str] = set()
    clean = lambda text: " ".join(text.replace("<br />", " ").split())
    for name in datasets:
        splits = load_dataset(name, mirror)
        train_texts, labels = splits["train"]
        held_out.update(clean(t) for split, (other, _) in splits.items() if split != "train" for t in other)
        keep = np.ones(len(train_texts), dtype=bool)
        for source, size in (held_out_pools or {}).get(name, []):
            keep &= ~dev_pool_rows(labels, source, size)
        held_out.update(clean(train_texts[i]) for i in np.flatnonzero(~keep))   # also their duplicates
        rows = np.flatnonzero(keep)
        if name == "imdb" and imdb_limit is not None and imdb_limit < len(rows):
            rows = np.sort(rng.choice(rows, imdb_limit, replace=False))
        texts.extend(clean(train_texts[i]) for i in rows)
    texts = [t for t in dict.fromkeys(texts) if t and t not in held_out]
    n_dev = max(1, round(dev_fraction * len(texts)))
    dev = np.zeros(len(texts), dtype=bool)
    dev[rng.permutation(len(texts))[:n_dev]] = True
    return [t for t, d in zip(texts, dev) if not d], [t for t, d in zip(texts, dev) if d]


def check_dev_pool_held_out(mlm_dir: str | Path | None, dataset: str, dev_source: str, dev_pool_size: int) -> None:
    """ConfigError unless the MLM at `mlm_dir` never trained on the dev pool a run draws from: its report
    lists `dataset` among its corpus with (dev_source, dev_pool_size) among the held-out pools (an
    official dev split, `dev_split`, is always held out). No folder (an MLM shipped with the backbone):
    nothing to check."""
    report_path = Path(mlm_dir) / REPORT_NAME if mlm_dir else None
    if report_path is None or not report_path.is_file():
        return
    report = json.loads(report_path.read_text())
    if dataset not in report.get("datasets", []) or dev_source == "dev_split":
        return
    pools = {tuple(p) for p in report.get("held_out_pools", {}).get(dataset, [])}
    if (dev_source, dev_pool_size) not in pools:
        raise ConfigError(f"{mlm_dir}: this MLM was trained on {dataset}'s train pool without holding out the dev "
                          f"pool ({dev_source}, {dev_pool_size}) that this run draws its dev set from (held out: "
                          f"{sorted(pools) or 'none'}); rebuild it with `repro mlm --overwrite` (dvc stage mlm), "
                          "which holds out every registered table's dev pool")
