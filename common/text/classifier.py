"""Text classifiers on a BERT-style backbone (`common.text.backbones`): [CLS] or mean pooling, a linear
head, and soft-token inputs.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from common.errors import ConfigError
from common.text.backbones import BERT_VOCAB_SIZE, build_encoder

if TYPE_CHECKING:
    from common.text.soft_tokens import SoftTokens


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
                inputs_embeds: Tensor | None = None, token_type_ids: Tensor | None = None) -> Tensor:
        """Logits [B, num_labels]; `attention_mask` defaults to input_ids != [PAD]. `inputs_embeds`
        [B, L, H], if given, replaces the word embeddings of input_ids (which then only set the mask).
        `token_type_ids` (sentence-pair segments 0/1) default to BERT's zeros."""
        if attention_mask is None:
            attention_mask = input_ids != self.pad_token_id
        segments = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if inputs_embeds is not None:
            return self._logits(attention_mask, inputs_embeds=inputs_embeds, **segments)
        return self._logits(attention_mask, input_ids=input_ids, **segments)

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


def build_text_classifier(backbone: str, num_labels: int, max_seq_len: int = 64, *,
                          vocab_size: int = BERT_VOCAB_SIZE, pooling: str = "cls") -> TextClassifier:
    """A TextClassifier on `backbone` (see the module table) with `pooling` "cls" or "mean". Random
    parts (the head; the whole tiny model) are initialised from torch's global RNG: seed it first."""
    return TextClassifier(build_encoder(backbone, vocab_size), num_labels, max_seq_len, pooling)
