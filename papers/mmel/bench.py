"""mmel speed benchmark (`repro bench --paper mmel --suite speed`): what MMEL costs over its baselines.

Three measurements, each in one process, interleaving the variants and taking medians (ratios
within a process are what is comparable on a loaded machine):

1. MMEL-H step / DA+UNI step on the same batch of |B| views per example: the weights of Eq. 6 are
   one softmax of detached losses, so the target is <= 1.05x (the paper's Table 1 gives both the
   same hours). MMEL-S is timed too.
2. Crop + flip views per second (`common.augment.image_views`, 32x32, uint8), at 1 and 2 threads:
   target >= 100k views/s on 2 cores, so view generation never bounds a step.
3. ResNet training throughput (images/s through forward, backward and the SGD step) eager vs
   torch.compile, for the DA step (batch B) and the MMEL-H step (batch B x |B| views); the first
   compiled call (compilation) is reported separately and not in the throughput.
"""
from __future__ import annotations

import copy
import os
import statistics
import time
from pathlib import Path

import torch

from common.augment.image_views import crop_flip_views
from common.io import write_json_atomic
from common.models import cifar_resnet
from common.train.batches import Batch
from papers.mmel.image_step import ImageMethodStep, PixelNormalized, StepSchedule

SETUPS = {  # profile -> model depth, batch (examples), |B|, step threads, compile backend, view-thread counts
    "smoke": {"depth": 8, "batch": 4, "views": 3, "threads": 1, "backend": "aot_eager", "view_threads": (1,)},
    "cpu": {"depth": 20, "batch": 128, "views": 10, "threads": 1, "backend": "inductor", "view_threads": (1, 2)},
    "paper": {"depth": 20, "batch": 128, "views": 10, "threads": 1, "backend": "inductor", "view_threads": (1, 2)},
}
RATIO_TARGET = 1.05
VIEWS_TARGET = 100_000


def _model(depth: int, init: dict | None = None) -> PixelNormalized:
    model = PixelNormalized(cifar_resnet(depth, 10), [125.3, 123.0, 113.9], [63.0, 62.1, 66.7])
    if init is not None:
        model.load_state_dict(init)
    return model


def _step(method: str, model, views: int, backend: str = "eager") -> ImageMethodStep:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    return ImageMethodStep(method, model, opt, StepSchedule(0.1, 0.2, [], 1), num_views=views, lambda_p=1.0,
                           lambda_t=1.0, compile_mode=backend)


def _interleaved(steps: dict, batch: Batch, repeats: int) -> dict[str, float]:
    """Median seconds per call of each step, the calls interleaved round-robin after one warm-up each."""
    for fn in steps.values():
        fn(batch)
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn(batch)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def step_ratio(setup: dict, batch: Batch, repeats: int) -> tuple[list[dict], list[str]]:
    model = _model(setup["depth"])
    steps = {m: _step(m, model, setup["views"]) for m in ("da_uni", "mmel_h", "mmel_s")}
    median = _interleaved(steps, batch, repeats)
    rows = [{"name": f"{m} step (|B| = {setup['views']})", "seconds_per_step": round(s, 4),
             "ratio_to_da_uni": round(s / median["da_uni"], 3)} for m, s in median.items()]
    ratio = median["mmel_h"] / median["da_uni"]
    verdict = (f"MMEL-H step / DA+UNI step: {ratio:.3f}x, target <= {RATIO_TARGET}x: "
               + ("met" if ratio <= RATIO_TARGET else "NOT met"))
    return rows, [verdict]


def view_throughput(setup: dict, images: torch.Tensor, repeats: int) -> tuple[list[dict], list[str]]:
    threads_before = torch.get_num_threads()
    rows, rates = [], {}
    generator = torch.Generator().manual_seed(0)
    try:
        for threads in setup["view_threads"]:
            torch.set_num_threads(threads)
            crop_flip_views(images, setup["views"], generator)            # warm-up
            times = []
            for _ in range(max(repeats, 3) * 4):
                start = time.perf_counter()
                crop_flip_views(images, setup["views"], generator)
                times.append(time.perf_counter() - start)
            rates[threads] = images.shape[0] * setup["views"] / statistics.median(times)
            rows.append({"name": f"crop+flip views ({threads} thread(s), {images.shape[0]} x {setup['views']} "
                                 "uint8 32x32 per call)", "views_per_second": round(rates[threads])})
    finally:
        torch.set_num_threads(threads_before)
    best_threads = max(setup["view_threads"])
    verdict = (f"crop+flip views/s at {best_threads} thread(s): {rates[best_threads]:,.0f}, target >= "
               f"{VIEWS_TARGET:,} on 2 cores: " + ("met" if rates[best_threads] >= VIEWS_TARGET else "NOT met"))
    return rows, [verdict]


def compile_throughput(setup: dict, batch: Batch, repeats: int) -> tuple[list[dict], list[str]]:
    init = copy.deepcopy(_model(setup["depth"]).state_dict())
    rows, verdicts = [], []
    for method, views in (("da", 1), ("mmel_h", setup["views"])):
        images = batch.x.shape[0] * views
        eager = _step(method, _model(setup["depth"], init), views)
        compiled = _step(method, _model(setup["depth"], init), views, setup["backend"])
        start = time.perf_counter()
        compiled(batch)                                   # compilation happens in the first call
        compile_s = time.perf_counter() - start
        median = _interleaved({"eager": eager, "compiled": compiled}, batch, repeats)
        speedup = median["eager"] / median["compiled"]
        for name, seconds in median.items():
            rows.append({"name": f"{method} step, {name} ({images} images per step)",
                         "seconds_per_step": round(seconds, 4), "images_per_second": round(images / seconds, 1),
                         **({"first_call_s": round(compile_s, 1)} if name == "compiled" else {})})
        verdicts.append(f"{method} step, torch.compile ({setup['backend']}) vs eager: {speedup:.2f}x "
                        f"({'faster' if speedup > 1 else 'not faster'}); first compiled call {compile_s:.0f} s")
    return rows, verdicts


def run_benchmark(paper: str = "mmel", repeats: int = 5, out_dir: Path = Path("reports/benchmarks"),
                  profile: str = "cpu") -> Path:
    setup = SETUPS[profile]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(setup["threads"])
    try:
        torch.manual_seed(0)
        images = torch.randint(0, 256, (setup["batch"], 3, 32, 32), dtype=torch.uint8)
        batch = Batch(images, torch.randint(0, 10, (setup["batch"],)), torch.arange(setup["batch"]))
        ratio_rows, ratio_verdicts = step_ratio(setup, batch, repeats)
        view_rows, view_verdicts = view_throughput(setup, images, repeats)
        torch.set_num_threads(setup["threads"])
        compile_rows, compile_verdicts = compile_throughput(setup, batch, repeats)
    finally:
        torch.set_num_threads(threads_before)
    payload = {
        "paper": paper, "profile": profile,
        "setup": (f"CIFAR ResNet-{setup['depth']}, batch {setup['batch']} examples, |B| = {setup['views']}, SGD "
                  f"(momentum 0.9, wd 5e-4), steps on {setup['threads']} thread(s), compile backend "
                  f"{setup['backend']}, medians of {repeats} interleaved repeats, torch {torch.__version__}; "
                  f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores when it ended"),
        "verdicts": ratio_verdicts + view_verdicts + compile_verdicts,
        "rows": ratio_rows + view_rows + compile_rows,
        "notes": [
            "A step = views for the batch (one batched crop+flip gather), one forward of all views, the method's "
            "loss, backward and the SGD step (papers/mmel/image_step.py), as in the runs.",
            "MMEL-H differs from DA+UNI only by a softmax over each example's detached view losses (Eq. 6).",
        ],
    }
    path = Path(out_dir) / f"{paper}_speed.json"
    write_json_atomic(path, payload)
    return path


def run_suite(params: dict, profile: str, repeats: int, out_dir: Path) -> Path:
    """`repro bench --paper mmel --suite speed` (the paper contract's BENCH_SUITES)."""
    return run_benchmark("mmel", repeats=repeats, out_dir=out_dir, profile=profile)
