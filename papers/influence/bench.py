"""influence speed benchmark (`repro bench --paper influence --suite speed`): what scoring by I_aug costs and how
fast CG reaches a stated residual. Writes <out>/influence_speed.json.

1. Step ratios (one process, the variants interleaved round-robin, medians; ratios within a process are what is
   comparable on a loaded machine), per classifier of the tables (cpu: the MNIST CNN and the CIFAR-10 ResNet-20),
   batch B of random images (timings do not depend on pixel values):
   * `none` F step: B originals, forward, backward, the optimizer step (training.AugmentStep, as in the runs);
   * `proposed` F step: B originals + their B x~ = G(x, E(x)) (G, E at their init; their cost does not depend on
     training);
   * I_aug score of B augmented samples, last-layer form (Sec. 3.4, as Alg. 1 uses it): features of the B
     originals and the B x~ through fixed F (one forward of 2B, no grad) + the closed form against a fixed s_val.
     Target: <= 1.5x the `none` F step (the issue's criterion);
   * the same including x~ = G(x, E(x)); E's step (mean I_aug back through F and G into E, Adam);
   * the general form (every parameter of F, float64, one jvp along s_val per batch), for comparison.
   Also the per-round cost of s_val (closed-form top-layer Hessian over the train features + direct solve).
2. CG (scipy `cg` on a LinearOperator of the torch.func HVP, `influence.cg_solve`) for s_val = (H + damping I)^-1
   grad L(z^val) of the MNIST CNN after `fit_steps` Adam steps on MNIST (random images if the mirror is absent;
   the JSON says which): on the top layer (checked against the closed-form direct solve) at relative residual
   1e-4 and 1e-8, and on all parameters at 1e-4 with a stated maxiter (a non-convex model: an indefinite
   H + damping I is reported as the error it raises). Iterations, HVPs, seconds and the residual reached.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common.config import data_mirror
from common.data.mnist import load_mnist
from common.io import write_json_atomic
from common.train.batches import ArrayData, Batch
from papers.influence.influence import Influence, InfluenceError, LastLayerInfluence, cg_solve
from papers.influence.models import MNIST_MOMENTS, build_classifier
from papers.influence.training import AugmentStep, StepSchedule, features_of
from papers.influence.transforms import ARCHS, Encoder, Generator

SETUPS = {  # profile -> archs timed, batch, train features for s_val, CG model fit steps / train / dev / maxiter
    "smoke": {"archs": ("cnn4",), "batch": 8, "n_features": 64, "fit_steps": 2, "cg_train": 32, "cg_dev": 16,
              "cg_maxiter_all": 3, "diagnosis_hvps": 3, "linearize_all": False, "threads": 1},
    "cpu": {"archs": ("cnn4", "resnet20"), "batch": 128, "n_features": 5500, "fit_steps": 200, "cg_train": 1000,
            "cg_dev": 500, "cg_maxiter_all": 200, "diagnosis_hvps": 300, "linearize_all": True,
            "threads": 1},
}
SETUPS["paper"] = SETUPS["cpu"]
RATIO_TARGET = 1.5
DAMPING = 0.01
DATASET = {"cnn4": "mnist"}
MOMENTS = {"mnist": MNIST_MOMENTS, "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}


def _interleaved(fns: dict, repeats: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _classifier(arch: str):
    dataset = DATASET.get(arch, "cifar10")
    mean, std = MOMENTS[dataset]
    return build_classifier(arch, 10, list(mean), list(std)), dataset


def step_ratios(arch: str, setup: dict, repeats: int) -> tuple[list[dict], list[str]]:
    torch.manual_seed(0)
    model, dataset = _classifier(arch)
    a, b = ARCHS[dataset], setup["batch"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (b, a.channels, a.size, a.size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (b,), generator=gen)
    batch = Batch(x, y, torch.arange(b))
    g, e = Generator(a, 7).eval().requires_grad_(False), Encoder(a)
    train = ArrayData(x, y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = StepSchedule(1e-3, 1.0, [], 10 ** 9)
    ecfg = {"warmup_fraction": 0.0, "rounds": 1, "steps": 1, "batch_size": b, "lr": 0.01, "betas": [0.9, 0.99],
            "damping": DAMPING}
    none = AugmentStep("none", model, opt, sched, crop_pad=0, flip=False, heuristic_ops=[], heuristic_length=0, seed=0)
    prop = AugmentStep("proposed", model, opt, sched, crop_pad=0, flip=False, heuristic_ops=[], heuristic_length=0,
                       seed=0, generator=g, encoder=e, encoder_cfg=ecfg, train=train, dev=train)
    prop.steps, prop.rounds = 1, [{}]                 # past the first encoder round: F sees originals + x~
    feats_train = torch.randn(setup["n_features"], model.fc.in_features, generator=gen)
    inf = LastLayerInfluence(model.fc.weight, model.fc.bias, feats_train, damping=DAMPING)
    s_val = torch.randn(model.fc.weight.numel() + model.fc.bias.numel(), dtype=torch.float64, generator=gen)
    xu = x.float() / 255
    with torch.no_grad():
        x_aug = g(xu, e(xu)).x
    e_opt = torch.optim.Adam(e.parameters(), lr=0.01, betas=(0.9, 0.99))

    def score(xa):
        with torch.no_grad():
            f = model.features(torch.cat([xu, xa]))
        return inf.aug_loss(f[:b].cpu(), f[b:].cpu(), y, s_val)

    def score_given():
        model.eval()
        score(x_aug)

    def score_with_g():
        model.eval()
        with torch.no_grad():
            xa = g(xu, e(xu)).x
        score(xa)

    def e_step():
        model.eval()
        model.requires_grad_(False)
        try:
            f0 = model.features(xu).detach()
            loss = inf.aug_loss(f0.cpu(), model.features(g(xu, e(xu)).x).cpu(), y, s_val).mean()
            e_opt.zero_grad(set_to_none=True)
            loss.backward()
            e_opt.step()
        finally:
            model.requires_grad_(True)

    general = Influence(model.eval(), xu, y)
    s_all = torch.randn(general.theta.numel(), dtype=torch.float64, generator=gen) * 1e-3

    def score_general():
        general.aug_loss(xu, x_aug, y, s_all)

    fns = {"none F step": lambda: none(batch), "proposed F step": lambda: prop(batch),
           "I_aug score, last layer (x~ given)": score_given, "I_aug score, last layer + G(x, E(x))": score_with_g,
           "E step (I_aug through F and G)": e_step, "I_aug score, general form (all parameters, float64)":
           score_general}
    median = _interleaved(fns, repeats)
    ref = median["none F step"]
    label = f"{arch} ({dataset}, batch {b})"
    rows = [{"name": f"{label}: {k}", "seconds": round(v, 5), "ratio_to_none_step": round(v / ref, 3)}
            for k, v in median.items()]
    t0 = time.perf_counter()
    k = min(500, len(feats_train))
    LastLayerInfluence(model.fc.weight, model.fc.bias, feats_train, damping=DAMPING).s_val(
        feats_train[:k], torch.arange(k) % 10)
    rows.append({"name": f"{label}: s_val per encoder round (top-layer Hessian over {setup['n_features']} train "
                         "features + direct solve)", "seconds": round(time.perf_counter() - t0, 4)})
    r1 = median["I_aug score, last layer (x~ given)"] / ref
    r2 = median["I_aug score, last layer + G(x, E(x))"] / ref
    verdicts = [f"{label}: I_aug score of {b} augmented samples (last layer) / none F step: {r1:.3f}x, target <= "
                f"{RATIO_TARGET}x: " + ("met" if r1 <= RATIO_TARGET else "NOT met"),
                f"{label}: the same including x~ = G(x, E(x)): {r2:.3f}x"]
    return rows, verdicts


def _mnist_or_random(n: int, mirror: str | None):
    try:
        data = load_mnist(mirror) if mirror else None
    except Exception:                                           # noqa: BLE001 - any failure: random images
        data = None
    if data is None:
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(n, 1, 28, 28, generator=gen)
        return x, torch.randint(0, 10, (n,), generator=gen), "random images, random labels (no MNIST mirror)"
    x, y = data["train"]
    return (torch.from_numpy(np.ascontiguousarray(x[:n])).permute(0, 3, 1, 2).float() / 255,
            torch.from_numpy(np.asarray(y[:n], dtype=np.int64)), f"MNIST, the first {n} train images")


def _trace_row(inf: Influence, what: str) -> dict:
    """The one-time torch.func.linearize trace of the full-batch HVP (kept out of the CG timings)."""
    t0 = time.perf_counter()
    inf.hvp(torch.zeros_like(inf.theta))
    return {"name": f"HVP linearize trace, {what}, once per theta_hat", "seconds": round(time.perf_counter() - t0, 3)}


class _Budget(Exception):
    pass


def _solve_row(name: str, fn) -> dict:
    try:
        sol = fn()
    except InfluenceError as exc:
        return {"name": name, "error": str(exc)}
    return {"name": name, "iterations": sol.iterations, "hvps": sol.hvps, "seconds": round(sol.seconds, 3),
            "residual": sol.residual, "x": sol.x}


def cg_rows(setup: dict, mirror: str | None) -> tuple[list[dict], list[str], str]:
    n, m = setup["cg_train"], setup["cg_dev"]
    x, y, source = _mnist_or_random(n + m, mirror)
    torch.manual_seed(0)
    model, _ = _classifier("cnn4")
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(2)
    for _ in range(setup["fit_steps"]):
        idx = torch.randint(0, n, (min(128, n),), generator=gen)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    tx, ty, vx, vy = x[:n], y[:n], x[n:], y[n:]
    rows = []
    top = Influence(model, tx, ty, params=["net.fc.weight", "net.fc.bias"], batch_size=500)
    closed = LastLayerInfluence(model.fc.weight, model.fc.bias, features_of(model, tx), damping=DAMPING)
    t0 = time.perf_counter()
    direct = closed.s_val(features_of(model, vx), vy)
    direct_s = time.perf_counter() - t0
    b = top.grad_mean(vx, vy)
    p_top = top.theta.numel()
    rows.append(_trace_row(top, f"top layer ({p_top} parameters)"))
    for rtol in (1e-4, 1e-8):
        row = _solve_row(f"CG, top layer ({p_top} parameters, damping {DAMPING}), rtol {rtol:g}",
                         lambda rtol=rtol: top.solve(b, "cg", DAMPING, rtol=rtol, check_spd=False))
        if "x" in row:
            row["rel_error_vs_direct"] = float((row.pop("x") - direct.x).norm() / direct.x.norm())
        rows.append(row)
    rows.append({"name": f"direct solve, top layer closed form ({p_top} parameters)", "seconds": round(direct_s, 3),
                 "residual": direct.residual})
    full = Influence(model, tx, ty, batch_size=500, linearize=setup["linearize_all"])
    bf = full.grad_mean(vx, vy)
    if setup["linearize_all"]:
        rows.append(_trace_row(full, f"all parameters ({full.theta.numel()})"))
    budget = setup["cg_maxiter_all"] + setup["diagnosis_hvps"]
    calls = [0]

    def hvp(v):                      # caps the Lanczos diagnosis cg_solve runs when CG fails (94k parameters)
        calls[0] += 1
        if calls[0] > budget:
            raise _Budget
        return full.hvp(v)
    name = (f"CG, all parameters ({full.theta.numel()} parameters, damping {DAMPING}), rtol 1e-4, maxiter "
            f"{setup['cg_maxiter_all']}")
    try:
        row = _solve_row(name, lambda: cg_solve(hvp, bf, damping=DAMPING, rtol=1e-4, maxiter=setup["cg_maxiter_all"],
                                                check_spd=False))
    except _Budget:
        row = {"name": name, "error": (f"CG did not reach rtol 1e-4 in {setup['cg_maxiter_all']} iterations; the "
                                       f"indefiniteness check (Lanczos) was cut at {setup['diagnosis_hvps']} HVPs")}
    row.pop("x", None)
    rows.append(row)
    verdicts = []
    for r in rows:
        if r["name"].startswith("CG"):
            verdicts.append(f"{r['name']}: " + (f"{r['iterations']} iterations, {r['seconds']:.2f} s, residual "
                                                f"{r['residual']:.1e}" if "error" not in r else
                                                f"failed: {r['error'][:160]}"))
    return rows, verdicts, f"{source}; {n} train / {m} validation; F after {setup['fit_steps']} Adam steps"


def run_benchmark(repeats: int = 5, out_dir: Path = Path("reports/benchmarks"), profile: str = "cpu",
                  mirror: str | None = None) -> Path:
    setup = SETUPS[profile]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(setup["threads"])
    rows, verdicts = [], []
    try:
        for arch in setup["archs"]:
            r, v = step_ratios(arch, setup, repeats)
            rows += r
            verdicts += v
        r, v, cg_setup = cg_rows(setup, mirror)
        rows += r
        verdicts += v
    finally:
        torch.set_num_threads(threads_before)
    payload = {
        "paper": "influence", "profile": profile,
        "setup": (f"batch {setup['batch']}, {setup['threads']} thread(s), medians of {repeats} interleaved repeats, "
                  f"torch {torch.__version__}; CG: {cg_setup}; machine load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores when it ended"),
        "verdicts": verdicts, "rows": rows,
        "notes": ["F steps are training.AugmentStep as in the runs (Adam; no crop here); G and E at their init.",
                  "The last-layer score is what Alg. 1 uses (Sec. 3.4); the general form is shown for comparison."],
    }
    path = Path(out_dir) / "influence_speed.json"
    write_json_atomic(path, payload)
    return path


def run_suite(params: dict, profile: str, repeats: int, out_dir: Path) -> Path:
    """`repro bench --paper influence --suite speed` (the paper contract's BENCH_SUITES)."""
    mirror = data_mirror(params["base"])
    return run_benchmark(repeats=repeats, out_dir=out_dir, profile=profile, mirror=mirror)
