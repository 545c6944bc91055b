"""metaaugment speed benchmark (`repro bench --paper metaaugment --suite speed`): what MetaAugment costs.

Two measurements in one process, the variants interleaved and medians taken (ratios within a
process are what is comparable on a loaded machine):

1. The training step of every method on the same uint8 batch (augmentation included): baseline,
   randaugment, metaaugment with each meta-gradient mode (`jvp`, `double_backward`), `jvp` also with
   torch.func.jvp instead of the stored-primal tangent program (the step as it was before), and the
   own-FE variant; each as a ratio to the baseline step. The paper: MetaAugment ~3x a standard step
   ("three forward and backward passes"); issue 16's target <= 2.5x.
2. Augmented images per second of the 14-op pipeline (flip/crop -> op j -> op k -> Cutout 16,
   `common.augment.image_ops.augment`, uniform op pairs and signed magnitudes) at 32 x 32.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from common.augment.image_ops import augment, sample_magnitudes
from common.io import write_json_atomic
from common.models.cifar_resnet import CifarResNet
from common.train.batches import ArrayData, Batch
from papers.metaaugment.image_step import CosineSchedule, MethodStep
from papers.metaaugment.metaaugment import TaskNetwork

SETUPS = {"smoke": {"depth": 8, "batch": 8, "threads": 1}, "cpu": {"depth": 20, "batch": 128, "threads": 1},
          "paper": {"depth": 20, "batch": 128, "threads": 1}}
RATIO_TARGET = 2.5
MEAN, STD = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


def _step(method: str, batch: int, depth: int, dev: ArrayData, init: dict, meta_gradient: str = "jvp",
          tangent_graph: bool = True) -> MethodStep:
    model = TaskNetwork(CifarResNet(depth, 10), MEAN, STD)
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    extra = {}
    if method.startswith("metaaugment"):
        extractor = TaskNetwork(CifarResNet(depth, 10), MEAN, STD) if method == "metaaugment_ownfe" else None
        extra = {"dev": dev, "val_batch_size": batch, "meta_gradient": meta_gradient, "extractor": extractor}
    step = MethodStep(method, model, opt, CosineSchedule(0.1, 10_000), kind="cifar", **extra)
    if step.update is not None:
        step.update.tangent_graph = tangent_graph
    return step


def _medians(calls: dict, repeats: int) -> dict[str, float]:
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def run_benchmark(paper: str = "metaaugment", repeats: int = 5, out_dir: Path = Path("reports/benchmarks"),
                  profile: str = "cpu") -> Path:
    setup = SETUPS[profile]
    threads = torch.get_num_threads()
    torch.set_num_threads(setup["threads"])
    try:
        gen = torch.Generator().manual_seed(0)
        n, depth = setup["batch"], setup["depth"]
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
        batch = Batch(images, torch.randint(0, 10, (n,), generator=gen), torch.arange(n))
        dev = ArrayData(torch.rand(max(n, 2), 3, 32, 32, generator=gen) * 255, torch.randint(0, 10, (max(n, 2),),
                                                                                             generator=gen))
        init = TaskNetwork(CifarResNet(depth, 10), MEAN, STD).state_dict()
        variants = {"baseline": ("baseline", "jvp", True), "randaugment": ("randaugment", "jvp", True),
                    "metaaugment (jvp)": ("metaaugment", "jvp", True),
                    "metaaugment (jvp via torch.func, before the tangent program)": ("metaaugment", "jvp", False),
                    "metaaugment (double_backward)": ("metaaugment", "double_backward", True),
                    "metaaugment_ownfe (jvp)": ("metaaugment_ownfe", "jvp", True)}
        steps = {name: _step(method, n, depth, dev, init, mode, graph)
                 for name, (method, mode, graph) in variants.items()}
        step_s = _medians({name: (lambda s=s: s(batch)) for name, s in steps.items()}, repeats)
        def ops():
            return augment(images, torch.randint(0, 14, (n,)), torch.randint(0, 14, (n,)), sample_magnitudes(n),
                           sample_magnitudes(n))
        aug_s = _medians({"augment": ops}, max(repeats, 3))["augment"]
    finally:
        torch.set_num_threads(threads)
    base = step_s["baseline"]
    rows = [{"name": f"{name} step", "seconds_per_step": round(s, 4), "ratio_to_baseline": round(s / base, 2)}
            for name, s in step_s.items()]
    rows.append({"name": "14-op pipeline (flip/crop, op pair, Cutout 16), 32x32",
                 "images_per_second": round(n / aug_s)})
    ratio = step_s["metaaugment (jvp)"] / base
    payload = {
        "paper": paper, "suite": "speed", "profile": profile,
        "setup": (f"CIFAR ResNet-{depth}, batch {n} (validation batch {n}), SGD, {setup['threads']} thread(s), "
                  f"median of {repeats} interleaved calls; machine load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores when it ended"),
        "verdicts": [f"MetaAugment step / baseline step = {ratio:.2f}x (paper ~3x; target <= {RATIO_TARGET}x): "
                     + ("met" if ratio <= RATIO_TARGET else "NOT met")],
        "rows": rows,
    }
    path = Path(out_dir) / f"{paper}_speed.json"
    write_json_atomic(path, payload)
    return path


def run_suite(params: dict, profile: str, repeats: int, out_dir: Path) -> Path:
    """The BENCH_SUITES entry point."""
    return run_benchmark("metaaugment", repeats=repeats, out_dir=out_dir, profile=profile)
