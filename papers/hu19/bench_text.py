"""Text meta-step overhead benchmark (hu19 Table 1 methods) on the profile's backbone.

Same process, same batch, interleaved repeats, medians: `ours_weight` step / `base` step (Adam-delta
lookahead with vmap per-example gradients) and `ours_aug` step / `fixed_aug` step (the second-order
augmenter update through a differentiable Adam step). Also times the official code's way of
taking the augmentation meta step (one second-order lookahead per example of the batch).
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import torch

from common.io import write_json_atomic
from common.text.backbones import encode_texts, load_tokenizer
from common.text.classifier import build_text_classifier
from common.train.batches import ArrayData, Batch
from common.train.optimizers import adam_optimizer, adamw_param_groups

BACKBONES = {"smoke": "tiny-random-bert", "cpu": "all-MiniLM-L6-v2", "paper": "bert-base-uncased"}
SENTENCES = [  # SST-style review sentences (fixed, so the benchmark needs no data mirror)
    "a gorgeous , witty , seductive movie .",
    "the film is strictly routine .",
    "it 's a lovely film with lovely performances by buy and accorsi .",
    "no one goes unindicted here , which is probably for the best .",
    "the acting , costumes , music , cinematography and sound are all astounding given the production 's "
    "austere locales .",
    "although visually striking and slickly staged , it 's also cold , grey , antiseptic and emotionally "
    "desiccated .",
    "a sour little movie at its core ; an exploration of the emptiness that underlay the relentless gaiety of the "
    "1920 's .",
    "this is a film well worth seeing , talking and singing heads and all .",
    "what really surprises about wisegirls is its low-key quality and genuine tenderness .",
    "it 's slow -- very , very slow .",
]


def _augmenter(backbone: str, num_labels: int, mlm_dir: str | None):
    from transformers import BertConfig, BertForMaskedLM

    from common.augment.cbert import LabelConditionalMLM
    from common.text.backbones import ATTN_IMPLEMENTATION, TINY_CONFIG, backbone_dir
    if mlm_dir and Path(mlm_dir).exists():
        from common.text.mlm import load_mlm_model
        mlm = load_mlm_model(backbone, mlm_dir)
    elif backbone == "tiny-random-bert":
        mlm = BertForMaskedLM(BertConfig(attn_implementation=ATTN_IMPLEMENTATION, **TINY_CONFIG))
    else:  # timing only: a randomly initialised MLM head costs the same as a trained one
        mlm = BertForMaskedLM.from_pretrained(str(backbone_dir(backbone)), local_files_only=True,
                                              attn_implementation=ATTN_IMPLEMENTATION)
    return LabelConditionalMLM(mlm, num_labels)


def _median_times(fns: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, (reset, fn) in fns.items():
            reset()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def _ours_weight_parts(medians: dict[str, float]) -> list[dict]:
    """Rows splitting the ours_weight step (meta-gradient + real weighted step) into its parts."""
    base = medians["base"]
    parts = [("  of which: per-example gradients (vmap)", medians["per_example_grads"]),
             ("  of which: dev-loss gradient at the lookahead", medians["dev_grad"]),
             ("  of which: Adam deltas, lookahead, <G, Delta_i> (rest of the meta-gradient)",
              medians["ours_weight_meta"] - medians["per_example_grads"] - medians["dev_grad"]),
             ("  of which: the real weighted step (= base)", base)]
    return [{"method": name, "ms_per_step": round(1000 * t, 1), "ratio": f"{t / base:.2f} x base"} for name, t in parts]


def run_text_benchmark(repeats: int = 5, out_dir: Path = Path("reports/benchmarks"), profile: str = "cpu",
                       mlm_dir: str | None = None, batch_size: int = 8, n_dev: int = 10, n_aug_meta: int = 4) -> Path:
    from common.augment.cbert import augmentation_positions, soft_samples
    from common.meta.lookahead import (
        dev_loss_grad,
        lookahead_meta_gradient,
        model_buffers,
        per_example_grads_token_rows,
        trainable_params,
    )
    from common.train.steps import weighted_step
    from papers.hu19.augmentation import AugmentationStep, lookahead_dev_loss
    from papers.hu19.text_tables import trim_padding
    from papers.hu19.weighting import WeightingConfig, WeightingMethod

    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = BACKBONES[profile]
    tokenizer = load_tokenizer(backbone)
    ids, _ = encode_texts(tokenizer, SENTENCES, 64)
    ids = trim_padding(ids)
    labels = torch.tensor([3, 1, 3, 2, 4, 1, 1, 3, 3, 0])
    x, y = ids[:batch_size], labels[:batch_size]
    dev = ArrayData(ids[:n_dev], labels[:n_dev])
    batch = Batch(x, y, torch.arange(len(y)))
    model = build_text_classifier(backbone, 5)
    optimizer = adam_optimizer(adamw_param_groups(model, 0.01), lr=4e-5)
    weighted_step(model, optimizer, batch, torch.full((len(y),), 1.0 / len(y)))   # Adam moments exist
    model_state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    augmenter = _augmenter(backbone, 5, mlm_dir)
    aug_optimizer = adam_optimizer(adamw_param_groups(augmenter, 0.01), lr=4e-5)
    aug_state = copy.deepcopy(augmenter.state_dict())

    def reset():
        model.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        augmenter.load_state_dict(aug_state)

    uniform = torch.full((len(y),), 1.0 / len(y))
    ours_weight = WeightingMethod("ours_weight", model, optimizer, ArrayData(x, y), dev, 5,
                                  WeightingConfig("softmax", 1.0, 1.0, 5.0))
    fixed = AugmentationStep("fixed_aug", model, optimizer, generator=torch.Generator().manual_seed(0),
                             augmenter=augmenter)
    ours_aug = AugmentationStep("ours_aug", model, optimizer, generator=torch.Generator().manual_seed(0),
                                augmenter=augmenter, augmenter_optimizer=aug_optimizer, dev=(dev.x, dev.y),
                                n_aug_meta=n_aug_meta)

    def official_style_meta_step():
        """One second-order lookahead per example (the official code's loop), then the augmenter step."""
        augmenter.train()
        aug_optimizer.zero_grad(set_to_none=True)
        g = torch.Generator().manual_seed(0)
        for i in range(len(y)):
            xi, yi = trim_padding(x[i:i + 1]), y[i:i + 1]
            soft = soft_samples(augmenter, xi, yi, augmentation_positions(xi, g), n_aug_meta, g)
            (lookahead_dev_loss(model, optimizer, soft, yi.repeat(n_aug_meta), dev.x, dev.y) / len(y)).backward()
        aug_optimizer.step()

    def ours_weight_dense_embedding():
        """ours_weight's step with the word-embedding table's per-example gradients dense [B, V, H]."""
        lookahead_meta_gradient(model, optimizer, x, y, dev.x, dev.y, torch.ones(len(y)), sparse_embedding=False)
        weighted_step(model, optimizer, batch, uniform)

    table = model.token_embedding_param

    def in_eval(fn):
        def run():
            model.eval()
            try:
                fn()
            finally:
                model.train()
        return run

    def per_example_gradients():
        """ours_weight's first part: per-example gradients (vmap; word-embedding table as rows)."""
        params = trainable_params(model)
        rest = {n: p for n, p in params.items() if n != table}
        per_example_grads_token_rows(model, rest, params[table], table, model_buffers(model), x, y)

    def dev_gradient():
        """ours_weight's dev-loss gradient (at theta' in the method; at theta here: same cost)."""
        dev_loss_grad(model, trainable_params(model), model_buffers(model), dev.x, dev.y)

    timed = {
        "base": (reset, lambda: weighted_step(model, optimizer, batch, uniform)),
        "per_example_grads": (reset, in_eval(per_example_gradients)),
        "dev_grad": (reset, in_eval(dev_gradient)),
        "ours_weight_meta": (reset, lambda: lookahead_meta_gradient(model, optimizer, x, y, dev.x, dev.y,
                                                                     torch.ones(len(y)))),
        "ours_weight": (reset, lambda: ours_weight(batch)),
        "ours_weight_dense": (reset, ours_weight_dense_embedding),
        "fixed_aug": (reset, lambda: fixed(batch)),
        "ours_aug": (reset, lambda: ours_aug(batch)),
    }
    medians = _median_times(timed, repeats)
    loop = _median_times({"official_loop_meta": (reset, official_style_meta_step)}, max(1, repeats // 2))
    meta_only = medians["ours_aug"] - medians["fixed_aug"]
    floor = (medians["per_example_grads"] + medians["dev_grad"] + medians["base"]) / medians["base"]
    rows = [
        {"method": "base", "ms_per_step": round(1000 * medians["base"], 1), "ratio": "1.00 (reference)"},
        {"method": "ours_weight", "ms_per_step": round(1000 * medians["ours_weight"], 1),
         "ratio": f"{medians['ours_weight'] / medians['base']:.2f} x base (target <= 3)"},
        *_ours_weight_parts(medians),
        {"method": "ours_weight, dense word-embedding deltas (before the sparse-row form)",
         "ms_per_step": round(1000 * medians["ours_weight_dense"], 1),
         "ratio": f"{medians['ours_weight_dense'] / medians['base']:.2f} x base"},
        {"method": "fixed_aug", "ms_per_step": round(1000 * medians["fixed_aug"], 1), "ratio": "1.00 (reference)"},
        {"method": "ours_aug", "ms_per_step": round(1000 * medians["ours_aug"], 1),
         "ratio": f"{medians['ours_aug'] / medians['fixed_aug']:.2f} x fixed_aug (target <= 4)"},
        {"method": "ours_aug meta step, official per-example loop", "ms_per_step":
            round(1000 * (loop["official_loop_meta"] + medians["fixed_aug"]), 1),
         "ratio": f"{(loop['official_loop_meta'] + medians['fixed_aug']) / medians['fixed_aug']:.2f} x fixed_aug "
                  f"(batched meta step {loop['official_loop_meta'] / max(meta_only, 1e-9):.1f}x faster)"},
    ]
    result = {
        "paper": "hu19", "profile": profile,
        "setup": (f"{backbone} classifier, batch {len(y)} SST-style sentences (trimmed to {x.shape[1]} tokens), "
                  f"dev {n_dev}, n_aug_meta {n_aug_meta}, Adam 4e-5, 1 thread, median of {repeats} interleaved "
                  f"repeats in one process; machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} "
                  "cores when it ended (other jobs slow every row, ratios less so)"),
        "verdicts": [
            f"ours_weight: {medians['ours_weight'] / medians['base']:.2f}x base, target <= 3x: "
            f"{'met' if medians['ours_weight'] <= 3 * medians['base'] else 'NOT met'}",
            f"ours_aug: {medians['ours_aug'] / medians['fixed_aug']:.2f}x fixed_aug, target <= 4x: "
            f"{'met' if medians['ours_aug'] <= 4 * medians['fixed_aug'] else 'NOT met'}"],
        "rows": rows,
        "notes": ["ours_weight: Adam deltas need per-example gradients (torch.func.vmap); the lookahead and dev "
                  "gradient add about one more forward/backward. The word-embedding table (11.7M of MiniLM's 22.7M "
                  "parameters) is handled exactly as Delta_0 + per-example corrections on the batch's token rows "
                  "(common.meta.lookahead.adam_meta_gradient); the dense row shows the cost without that. "
                  "The 'of which' rows are timed separately in the same process (they need not add up exactly): "
                  f"per-example gradients, the dev gradient and the real step alone cost {floor:.2f}x a base step, "
                  "so a 3x target leaves little or nothing for the Adam deltas; getting under it would need the "
                  "real step to reuse the meta step's per-example gradients, which are taken in eval mode (no "
                  "dropout) while the real step trains with dropout: a "
                  "different method.",
                  "ours_aug: the augmenter's soft samples for n_aug_meta copies, a classifier backward with "
                  "create_graph, the Adam step as a graph (word-embedding rows: only those the dev batch reads), "
                  "the dev loss at theta' and the second-order backward into the augmenter only.",
                  "The official per-example loop row runs our lookahead once per example (so it also has the "
                  "row-restricted step); the official code's own loop would be slower still."],
    }
    out = Path(out_dir) / "hu19_text.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    return out


def run_suite(params: dict, profile: str, repeats: int, out_dir: Path) -> Path:
    """`repro bench --paper hu19 --suite text`: the profile's Table 1 backbone, MLM and n_aug_meta."""
    table1 = params.get("hu19", {}).get("profiles", {}).get(profile, {}).get("table1", {})
    return run_text_benchmark(repeats=repeats, out_dir=out_dir, profile=profile, mlm_dir=table1.get("mlm_dir"),
                              n_aug_meta=table1.get("augmentation", {}).get("n_aug_meta", 4))
