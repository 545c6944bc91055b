"""Label-conditional BERT augmenter (CBERT) with gumbel-softmax soft samples (hu19 Sec. 4.2; mmel).

hu19's augmentation distribution g_phi(x | x*, y) (Eq. 9-10) is a masked LM conditioned on the
label: a `transformers.BertForMaskedLM` whose token-type (segment) embedding is replaced by a label
embedding, every position of a sentence getting token_type_id = its label (as the official code):

* num_labels != 2: a new nn.Embedding(num_labels, hidden), initialised N(0, initializer_range=0.02);
* num_labels == 2: the pretrained 2-row token-type table is kept (label = segment id).

It is MLM-fitted on the task's train set (`fit_cbert`, best dev MLM loss kept). An augmented sample
masks max(n // 7, 2) random positions of a sentence of real length n (`augmentation_positions`) and
fills each with a gumbel-softmax sample (tau 1, soft, full vocabulary) of the label-conditional MLM's
logits (`soft_samples`): a relaxed sample x ~ g_phi that is differentiable w.r.t. phi, so the dev
loss of the classifier trained on it (Eq. 10, then Eq. 8) can be back-propagated into the augmenter.
The classifier consumes the samples as probability-weighted input embeddings
(`TextClassifier.forward_soft_tokens`). Under torch.no_grad() the same samples are those of the
fixed augmenter (the `fixed_aug` baseline, Wu et al. 2019).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.text.soft_tokens import SoftTokens
from common.train.batches import PAD_ID, real_width
from common.train.optimizers import adam_optimizer, adamw_param_groups

BERT_MASK_ID = 103     # "[MASK]" in the bert-base-uncased WordPiece vocabulary
DEV_MASK_SEED = 1234   # the dev MLM loss always uses the same masks (comparable across epochs)
WEIGHT_DECAY = 0.01    # hu19: 0.01 except biases and LayerNorm parameters

# hu19 Figure 2: an SST-5 train sentence labelled "negative" (SST-5 label 1), "striking" and "grey"
# masked. The paper prints it detokenised and without the "..."; this is its form in the SST data.
FIGURE2_SENTENCE = ("although ... visually striking and slickly staged , it 's also cold , grey , "
                    "antiseptic and emotionally desiccated .")
FIGURE2_LABEL = 1
FIGURE2_WORDS = ("striking", "grey")


class LabelConditionalMLM(nn.Module):
    """BertForMaskedLM with its token-type embedding used as a label embedding (see the module doc).

    `mask_token_id` defaults to BERT's [MASK] (103), or to the last id of a toy vocabulary smaller
    than that (random test models)."""

    def __init__(self, mlm: nn.Module, num_labels: int, mask_token_id: int | None = None):
        super().__init__()
        config = mlm.config
        self.mlm = mlm
        self.num_labels = num_labels
        self.vocab_size = config.vocab_size
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else PAD_ID
        if mask_token_id is None:
            mask_token_id = BERT_MASK_ID if config.vocab_size > BERT_MASK_ID else config.vocab_size - 1
        self.mask_token_id = mask_token_id
        embeddings = mlm.bert.embeddings
        if num_labels != 2:
            old = embeddings.token_type_embeddings
            table = nn.Embedding(num_labels, config.hidden_size, device=old.weight.device, dtype=old.weight.dtype)
            nn.init.normal_(table.weight, mean=0.0, std=config.initializer_range)
            embeddings.token_type_embeddings = table
            config.type_vocab_size = num_labels

    def encode(self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Last hidden states [B, L, H] of the label-conditional encoder (token_type_ids = label)."""
        if attention_mask is None:
            attention_mask = input_ids != self.pad_token_id
        token_type_ids = labels.to(input_ids.device).long()[:, None].expand_as(input_ids)
        return self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask.long(),
                             token_type_ids=token_type_ids).last_hidden_state

    def masked_logits(self, input_ids: Tensor, labels: Tensor, positions: Tensor,
                      attention_mask: Tensor | None = None) -> Tensor:
        """MLM logits [M, V] at the M True entries of `positions` (row-major); the vocabulary
        projection runs only there."""
        hidden = self.encode(input_ids, labels, attention_mask)
        return self.mlm.cls(hidden[positions])

    def forward(self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """MLM logits [B, L, V]; `labels` [B] are class labels; mask defaults to input_ids != [PAD]."""
        return self.mlm.cls(self.encode(input_ids, labels, attention_mask))




def augmentation_positions(input_ids: Tensor, generator: torch.Generator, pad_id: int = PAD_ID) -> Tensor:
    """Positions to substitute, bool [B, L] (official hu19 rule): for a sentence of real length n
    (incl. [CLS]/[SEP], right-padded), max(n // 7, 2) distinct positions uniformly among 1..n-2 when
    n >= 4, else position 1. Deviation: an empty sentence (n <= 2) gets none (position 1 would be
    [SEP] or padding). One uniform draw per entry of the batch, so the generator advances by B*L."""
    batch, width = input_ids.shape
    n = (input_ids.cpu() != pad_id).sum(dim=1)
    k = torch.where(n >= 4, torch.clamp(n // 7, min=2), (n == 3).long())
    index = torch.arange(width)[None, :]
    candidate = (index >= 1) & (index <= (n - 2)[:, None])
    scores = torch.rand((batch, width), generator=generator).masked_fill(~candidate, 2.0)
    rank = scores.argsort(dim=1).argsort(dim=1)  # k lowest scores among candidates = uniform k-subset
    return ((rank < k[:, None]) & candidate).to(input_ids.device)


def gumbel_noise(shape, generator: torch.Generator, dtype: torch.dtype, device) -> Tensor:
    """-log(-log U), U ~ Uniform(0, 1) from `generator` (CPU), clamped away from 0 and 1."""
    u = torch.rand(shape, generator=generator, dtype=dtype)
    info = torch.finfo(dtype)
    return -torch.log(-torch.log(u.clamp(info.tiny, 1.0 - info.eps))).to(device)


def soft_samples(model: LabelConditionalMLM, input_ids: Tensor, labels: Tensor, positions: Tensor,
                 n_aug: int, generator: torch.Generator, tau: float = 1.0) -> SoftTokens:
    """n_aug relaxed samples x ~ g_phi(x | x*, y) of every sentence (Eq. 9-10 with gumbel-softmax):
    [MASK] at `positions`, one run of the label-conditional encoder, MLM logits only at the masked
    positions, then softmax((logits + gumbel) / tau) per sample. Returns n_aug*B rows, augmentation
    a of example b at row a*B + b; differentiable w.r.t. the model's parameters (wrap in
    torch.no_grad() for a frozen augmenter)."""
    masked = input_ids.masked_fill(positions, model.mask_token_id)
    logits = model.masked_logits(masked, labels, positions, attention_mask=input_ids != model.pad_token_id)
    noise = gumbel_noise((n_aug, *logits.shape), generator, logits.dtype, logits.device)
    probs = torch.softmax((logits.unsqueeze(0) + noise) / tau, dim=-1)
    return SoftTokens(input_ids.repeat(n_aug, 1), positions.repeat(n_aug, 1), probs.reshape(-1, logits.shape[-1]))


def _trim(*tensors: Tensor, ids: Tensor) -> tuple[Tensor, ...]:
    """Cut right padding: keep columns up to the longest row of `ids` (dynamic padding)."""
    width = real_width(ids)
    return tuple(t[:, :width] for t in tensors)


def _mlm_loss_sum(model: LabelConditionalMLM, masked: Tensor, targets: Tensor, labels: Tensor,
                  attention_mask: Tensor) -> tuple[Tensor, int]:
    """(summed cross-entropy over the masked tokens, their count)."""
    where = targets != -100
    count = int(where.sum())
    if count == 0:
        return masked.new_zeros((), dtype=torch.float32), 0
    logits = model.masked_logits(masked, labels, where, attention_mask)
    return F.cross_entropy(logits.float(), targets[where], reduction="sum"), count


def fit_cbert(model: LabelConditionalMLM, train_ids: Tensor, train_labels: Tensor, dev_ids: Tensor,
              dev_labels: Tensor, *, epochs: int, batch_size: int, lr: float, generator: torch.Generator,
              on_epoch: Callable[[dict], None] | None = None) -> dict:
    """MLM-fit the label-conditional augmenter on the task's train set (hu19, before Eq. 9).

    15% masking with 80/10/10 replacement (`common.text.mlm.mask_tokens`), fresh masks every epoch
    from `generator`, which also shuffles the batches; AdamW (decoupled decay 0.01 except
    bias/LayerNorm, as the official BertAdam), no warmup. After each epoch the dev MLM loss on
    fixed masks (seed DEV_MASK_SEED); the state with the lowest dev loss is restored at the end.
    Inputs: int64 [N, L] right-padded with 0 and class labels [N]. Returns {"epochs": [{"epoch",
    "train_loss", "dev_loss"}, ...], "initial_dev_loss", "best_epoch" (0 = before training),
    "best_dev_loss"}; `on_epoch` receives each epoch's row."""
    from common.text.mlm import mask_tokens
    device = next(model.parameters()).device
    masking = dict(mask_id=model.mask_token_id, vocab_size=model.vocab_size)

    def masks(ids: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        ids = ids.cpu()
        masked, targets = mask_tokens(ids, (ids != model.pad_token_id).long(), gen, **masking)
        return masked.to(device), targets.to(device)

    dev_ids = dev_ids.to(device)
    dev_masked, dev_targets = masks(dev_ids, torch.Generator().manual_seed(DEV_MASK_SEED))

    @torch.no_grad()
    def dev_loss() -> float:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, len(dev_ids), batch_size):
            ids, masked, targets = _trim(*(t[start:start + batch_size] for t in (dev_ids, dev_masked, dev_targets)),
                                         ids=dev_ids[start:start + batch_size])
            loss, n = _mlm_loss_sum(model, masked, targets, dev_labels[start:start + batch_size].to(device),
                                    ids != model.pad_token_id)
            total, count = total + float(loss), count + n
        model.train(was_training)
        return total / max(count, 1)

    optimizer = adam_optimizer(adamw_param_groups(model, WEIGHT_DECAY), lr=lr, decoupled=True)
    best_loss = initial = dev_loss()
    best_epoch, best_state = 0, copy.deepcopy(model.state_dict())
    rows = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_ids), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = train_ids[idx]
            (ids,) = _trim(batch, ids=batch)
            masked, targets = masks(ids, generator)
            ids = ids.to(device)
            loss, n = _mlm_loss_sum(model, masked, targets, train_labels[idx].to(device), ids != model.pad_token_id)
            if n == 0:
                continue
            optimizer.zero_grad(set_to_none=True)
            (loss / n).backward()
            optimizer.step()
            total, count = total + float(loss.detach()), count + n
        row = {"epoch": epoch, "train_loss": total / max(count, 1), "dev_loss": dev_loss()}
        rows.append(row)
        if row["dev_loss"] < best_loss:
            best_loss, best_epoch, best_state = row["dev_loss"], epoch, copy.deepcopy(model.state_dict())
        if on_epoch:
            on_epoch(row)
    model.load_state_dict(best_state)
    optimizer.zero_grad(set_to_none=True)
    return {"epochs": rows, "initial_dev_loss": initial, "best_epoch": best_epoch, "best_dev_loss": best_loss}


@torch.no_grad()
def top_k_substitutions(model: LabelConditionalMLM, tokenizer, sentence: str, label: int, words: Sequence[str],
                        k: int = 5) -> dict[str, list[str]]:
    """hu19 Figure 2: mask every wordpiece of every occurrence of each word of `words` in the
    (whitespace-tokenised) sentence, all at once, run the label-conditional MLM and return the k
    most probable tokens at each word's first wordpiece (special tokens excluded)."""
    pieces, word_of = [tokenizer.cls_token_id], [None]
    for word in sentence.split():
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
        pieces += ids
        word_of += [word.lower()] * len(ids)
    pieces.append(tokenizer.sep_token_id)
    word_of.append(None)
    targets = [w.lower() for w in words]
    missing = [w for w in targets if w not in word_of]
    if missing:
        raise ValueError(f"words {missing} do not occur in {sentence!r}")
    device = next(model.parameters()).device
    ids = torch.tensor([pieces], device=device)
    positions = torch.tensor([[w in targets for w in word_of]], device=device)
    was_training = model.training
    model.eval()
    logits = model(ids.masked_fill(positions, model.mask_token_id), torch.tensor([label], device=device))[0]
    model.train(was_training)
    logits[:, [i for i in tokenizer.all_special_ids if i < logits.shape[-1]]] = float("-inf")
    out = {}
    for word, target in zip(words, targets):
        top = logits[word_of.index(target)].topk(k).indices.tolist()
        out[word] = tokenizer.convert_ids_to_tokens(top)
    return out
