"""MMEL's textual augmented samples (Yi et al., ICLR 2021, Sec. 3.3 and Appendix C, Algorithm 2).

For each sentence, k of its tokens are masked and a masked LM (BertForMaskedLM) fills them greedily:
view i (i = 1 .. |B(x)|-1) takes the i-th most likely word at the first masked position p_1, then
p_2 .. p_k are filled in order, each with the argmax given the sequence filled so far. The views are
generated once, offline, before training (`write_views` / `read_views` store them); the original
sentence is view 0 of B(x) in `papers.mmel.mmel` and is not returned here.

Choices the paper leaves open (all ours):

* k = round-half-up(mask_ratio * n_real), n_real = tokens other than [CLS]/[SEP]/[PAD]/padding
  (Appendix C: "rounding the product of masking ratio and length of the sequence to the nearest
  number"; the length excludes the special tokens), clamped to [1, n_real]; rows with n_real = 0
  come back unchanged. The product is computed in float64.
* Positions: Alg. 2 line 1 draws them once per sentence, so all views of a row share p_1 .. p_k.
  They are drawn uniformly without replacement: one uniform score per token (`torch.rand` of the
  row's shape from the CPU generator), and p_1, p_2, ... are the real tokens in increasing score
  order. The fill order p_1 .. p_k is this random order, not left to right (Alg. 2 does not sort).
* Tokens are WordPiece tokens (the paper's "tokens"), not whole words: a word of several pieces can
  be partly masked, and a "##" continuation piece may be predicted at a word start (decoding then
  joins it to the previous word); we do not forbid that, the paper says nothing about it.
* Predictions are restricted to ordinary wordpieces (ids >= FIRST_WORDPIECE_ID): never a special or
  [unusedN] token. The original token stays allowed (the paper does not exclude it), so a view can
  change fewer than k tokens. Ties: `torch.topk` / `torch.argmax` order.
* View i's p_1 uses the i-th of the top-(|B|-1) of one forward of x_mask; that forward is done once
  per row (the views are identical there), the later positions with one batched forward of all
  N * (|B|-1) partial views per position (rows with fewer masked tokens drop out). The decoder runs
  at the predicted position only (the 30522-way decoder on every token would dominate the cost).
* The model runs in eval mode (no dropout) under torch.no_grad; its mode is restored afterwards.
* `augment_texts` truncates each sentence to max_seq_len tokens ([CLS] and [SEP] included, as the
  classifiers see them); the views hold only the kept tokens. Views are decoded with the tokenizer
  (special tokens skipped, tokenization spaces cleaned up), so "##" pieces join their neighbours.
* Determinism: text j's positions come from its own generator seeded with
  blake2b(("mmel.text_views", seed, stream, j)) (stream 0: single sentences; 1 and 2: the two sides
  of a pair, so the sides never share a seed). Batches hold texts of exactly the same token length
  (sorted by length, input order restored), so a text's forward never contains padding and does not
  depend on the other texts in its batch: the views are the same for any batch_size (the test checks
  this bitwise on CPU; a CPU kernel that rounded rows differently by batch size could flip near-ties).
* Sentence pairs: each side is augmented separately (Appendix C; Table 6 default "separate
  sentence-pair" = True); view i of a pair is (view i of sentence 1, view i of sentence 2).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor

from common.errors import ConfigError, DataError
from common.io import write_json_atomic
from common.text.mlm import CLS_ID, FIRST_WORDPIECE_ID, MASK_ID, PAD_ID, SEP_ID


def _check(num_views, mask_ratio) -> None:
    if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 2:
        raise ConfigError(f"num_views = |B(x)| must be an int >= 2 (the original plus >= 1 augmented view); "
                          f"got {num_views!r}")
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio <= 1:
        raise ConfigError(f"mask_ratio must be a number in (0, 1] (the paper uses 0.4); got {mask_ratio!r}")


@contextlib.contextmanager
def _eval_no_grad(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _logits_at(model, ids: Tensor, attention: Tensor, positions: Tensor) -> Tensor:
    """[M, vocab] MLM logits of row m at positions[m], non-wordpiece ids set to -inf."""
    hidden = model.bert(input_ids=ids, attention_mask=attention).last_hidden_state
    logits = model.cls(hidden[torch.arange(len(ids), device=ids.device), positions])
    logits[:, :FIRST_WORDPIECE_ID] = float("-inf")
    return logits


def _greedy(model, input_ids: Tensor, attention_mask: Tensor, scores: Tensor, num_views: int,
            mask_ratio: float) -> Tensor:
    """Algorithm 2 with positions = real tokens in increasing `scores` order ([N, L] floats in [0, 1))."""
    n, length = input_ids.shape
    n_views, device = num_views - 1, next(model.parameters()).device
    ids, attention = input_ids.to(device), attention_mask.to(device)
    real = (attention != 0) & (ids != CLS_ID) & (ids != SEP_ID) & (ids != PAD_ID)
    n_real = real.sum(dim=1)
    k = torch.floor(n_real.double() * mask_ratio + 0.5).long().clamp(min=1).minimum(n_real)
    order = scores.to(device).masked_fill(~real, 2.0).argsort(dim=1, stable=True)
    k_max = int(k.max()) if n else 0
    views = ids[:, None, :].repeat(1, n_views, 1)
    if k_max == 0:
        return views.to(input_ids.device)
    chosen = torch.zeros_like(real).scatter_(1, order[:, :k_max], torch.arange(k_max, device=device) < k[:, None])
    views[:] = torch.where(chosen, torch.full_like(ids, MASK_ID), ids)[:, None, :]
    view_index = torch.arange(n_views, device=device)[None, :]
    for j in range(k_max):
        rows = torch.nonzero(k > j).flatten()
        position = order[rows, j]
        if j == 0:      # line 4: the views are all x_mask here, one forward per row
            fill = _logits_at(model, views[rows, 0], attention[rows], position).topk(n_views).indices
        else:           # line 6: each view's argmax given its partially filled sequence
            flat = views[rows].reshape(-1, length)
            fill = _logits_at(model, flat, attention[rows].repeat_interleave(n_views, dim=0),
                              position.repeat_interleave(n_views)).argmax(dim=1).view(-1, n_views)
        views[rows[:, None], view_index, position[:, None]] = fill
    return views.to(input_ids.device)


def greedy_mlm_views(model, input_ids: Tensor, attention_mask: Tensor, num_views: int, mask_ratio: float,
                     generator: torch.Generator) -> Tensor:
    """[N, num_views - 1, L] augmented token ids of a batch [N, L] by Algorithm 2 (module docstring).
    `generator` (CPU) draws one uniform score per token, torch.rand((N, L)); special tokens and padding
    are never changed."""
    _check(num_views, mask_ratio)
    scores = torch.rand(tuple(input_ids.shape), generator=generator)
    with _eval_no_grad(model):
        return _greedy(model, input_ids, attention_mask, scores, num_views, mask_ratio)


def _text_generator(seed: int, stream: int, index: int) -> torch.Generator:
    digest = hashlib.blake2b(repr(("mmel.text_views", seed, stream, index)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def _augment_texts(model, tokenizer, texts, *, num_views, mask_ratio, seed, max_seq_len, batch_size,
                   stream: int) -> list[list[str]]:
    _check(num_views, mask_ratio)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an int >= 0; got {seed!r}")
    if not isinstance(max_seq_len, int) or max_seq_len < 2 or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"need max_seq_len >= 2 and batch_size >= 1; got {max_seq_len!r}, {batch_size!r}")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ConfigError(f"augment_texts: texts must be strings; item {bad[0]} is {texts[bad[0]]!r}")
    if not texts:
        return []
    rows = tokenizer(texts, truncation=True, max_length=max_seq_len)["input_ids"]
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    batches: list[list[int]] = []
    for i in order:                    # same-length batches: no padding at all
        if batches and len(batches[-1]) < batch_size and len(rows[batches[-1][0]]) == len(rows[i]):
            batches[-1].append(i)
        else:
            batches.append([i])
    out: list[list[str]] = [[] for _ in texts]
    with _eval_no_grad(model):
        for batch in batches:
            ids = torch.tensor([rows[i] for i in batch], dtype=torch.long)
            scores = torch.stack([torch.rand(ids.shape[1], generator=_text_generator(seed, stream, i)) for i in batch])
            views = _greedy(model, ids, torch.ones_like(ids), scores, num_views, mask_ratio)
            for i, row in zip(batch, views.tolist()):
                out[i] = [tokenizer.decode(v, skip_special_tokens=True, clean_up_tokenization_spaces=True) for v in row]
    return out


def augment_texts(model, tokenizer, texts: list[str], *, num_views: int, mask_ratio: float, seed: int,
                  max_seq_len: int, batch_size: int = 64) -> list[list[str]]:
    """num_views - 1 augmented strings per text (input order), by Algorithm 2 on its first max_seq_len
    tokens; the same for any batch_size (module docstring: per-text generators, same-length batches)."""
    return _augment_texts(model, tokenizer, texts, num_views=num_views, mask_ratio=mask_ratio, seed=seed,
                          max_seq_len=max_seq_len, batch_size=batch_size, stream=0)


def augment_task(x: list[str] | list[tuple[str, str]], model, tokenizer, **kwargs) -> list[list]:
    """Views of a task's inputs: `augment_texts` for single sentences; for (s1, s2) pairs each side
    separately (own seed stream), view i of a pair = (view i of s1, view i of s2)."""
    x = list(x)
    if all(isinstance(item, str) for item in x):
        return augment_texts(model, tokenizer, x, **kwargs)
    if not all(isinstance(item, (tuple, list)) and len(item) == 2 for item in x):
        raise ConfigError("augment_task: x must be all strings or all (sentence 1, sentence 2) pairs")
    kwargs.setdefault("batch_size", 64)
    first, second = ([_augment_texts(model, tokenizer, [item[side] for item in x], stream=side + 1, **kwargs)
                      for side in (0, 1)])
    return [list(zip(a, b)) for a, b in zip(first, second)]


def _normalised(meta: dict) -> dict:
    return json.loads(json.dumps(meta, sort_keys=True))


def _check_shape(views: list, meta: dict, where: str, error) -> None:
    if "n" not in meta or "num_views" not in meta:
        raise error(f"{where}: meta needs 'n' and 'num_views' (got keys {sorted(meta)})")
    if len(views) != meta["n"]:
        raise error(f"{where}: {len(views)} rows of views but meta n = {meta['n']}")
    wrong = [i for i, row in enumerate(views) if len(row) != meta["num_views"] - 1]
    if wrong:
        raise error(f"{where}: row {wrong[0]} has {len(views[wrong[0]])} views, expected num_views - 1 = "
                    f"{meta['num_views'] - 1}")


def write_views(path, views, meta: dict) -> None:
    """Atomic JSON {"meta": meta, "views": views}; meta must hold 'n' and 'num_views' matching views
    (plus whatever identifies them: MLM weights sha256, seed, mask_ratio, ...)."""
    _check_shape(views, meta, str(path), ConfigError)
    write_json_atomic(Path(path), {"meta": meta, "views": [[list(v) if isinstance(v, tuple) else v for v in row]
                                                           for row in views]})


def read_views(path, expected_meta: dict) -> list[list]:
    """The views written by `write_views` (pairs as tuples). DataError if the stored meta differs from
    expected_meta (naming the first differing key) or the views do not match its n / num_views."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no augmented views file here; generate it with write_views(augment_task(...))")
    try:
        payload = json.loads(path.read_text())
        stored, views = payload["meta"], payload["views"]
        if not isinstance(stored, dict) or not isinstance(views, list):
            raise TypeError("'meta' must be an object and 'views' a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a views file ({type(exc).__name__}: {exc}); delete it and regenerate") from exc
    expected = _normalised(expected_meta)
    for key in sorted(set(stored) | set(expected)):
        if stored.get(key, "<missing>") != expected.get(key, "<missing>"):
            raise DataError(f"{path}: stored views have meta {key!r} = {stored.get(key, '<missing>')!r}, expected "
                            f"{expected.get(key, '<missing>')!r}; delete the file and regenerate it")
    _check_shape(views, stored, str(path), DataError)
    return [[tuple(v) if isinstance(v, list) else v for v in row] for row in views]
