"""metaaugment's report hook: the learned transformation distribution (the paper's Figure 2) as numbers.

Every MetaAugment run stores the sampler's final p_{j,k} (Eq. 5; `metrics.sampler_probs`, 14 x 14,
rows = first op, columns = second op in `common.augment.image_ops.OPS` order). Per setting and
method this section averages p over the seeds and shows each op's marginal probability (the mean of
its first-op and second-op marginals; uniform = 1/14 = 7.1%), the share of the five geometric ops
(uniform 5/14 = 35.7%: the paper finds them suppressed on Omniglot, not on CIFAR), the most and
least likely pairs, and the learned inner learning rate alpha.
"""
from __future__ import annotations

import statistics

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")


def _row(values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def mean_distribution(runs: list[dict]) -> tuple[list[str], list[list[float]]] | None:
    """(op names, seed-mean p [K][K]) of the runs that stored a sampler distribution, else None."""
    grids = [r["metrics"]["sampler_probs"] for r in runs if r.get("metrics", {}).get("sampler_probs")]
    if not grids:
        return None
    ops = next(r["metrics"]["ops"] for r in runs if r.get("metrics", {}).get("sampler_probs"))
    k = len(ops)
    return ops, [[statistics.mean(g[i][j] for g in grids) for j in range(k)] for i in range(k)]


def op_marginals(ops: list[str], p: list[list[float]]) -> dict[str, float]:
    k = len(ops)
    return {op: (sum(p[i]) + sum(p[j][i] for j in range(k))) / 2 for i, op in enumerate(ops)}


def report_sections(table: str, runs: list[dict], published: dict) -> list[str]:
    """Markdown lines after a table: per (setting, method) with sampler distributions, Figure 2's numbers."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        if r.get("metrics", {}).get("sampler_probs"):
            cells.setdefault((r["setting"], r["method"]), []).append(r)
    if not cells:
        return []
    intro = ("Learned transformation distribution (Figure 2's analog; Eq. 5's p at the end of training, mean over "
             "seeds): each op's marginal probability (uniform 7.1%), the geometric ops' share (uniform 35.7%), the "
             "most and least likely ordered pairs (first op -> second op), and the learned alpha.")
    lines = [intro, "",
             _row(["setting", "method", "n", "geometric share", "top ops", "bottom ops", "top pair", "bottom pair",
                   "alpha (mean)"]), _row(["---"] * 9)]
    for (setting, method), group in sorted(cells.items()):
        ops, p = mean_distribution(group)
        marg = op_marginals(ops, p)
        ranked = sorted(marg, key=marg.get, reverse=True)
        pairs = sorted(((p[i][j], f"{ops[i]} -> {ops[j]}") for i in range(len(ops)) for j in range(len(ops))),
                       reverse=True)
        alphas = [r["metrics"]["alpha_final"] for r in group if "alpha_final" in r["metrics"]]
        lines.append(_row([setting, method, len(group), f"{100 * sum(marg[o] for o in GEOMETRIC if o in marg):.1f}%",
                           ", ".join(f"{o} {100 * marg[o]:.1f}%" for o in ranked[:3]),
                           ", ".join(f"{o} {100 * marg[o]:.1f}%" for o in ranked[-3:]),
                           f"{pairs[0][1]} {100 * pairs[0][0]:.2f}%", f"{pairs[-1][1]} {100 * pairs[-1][0]:.2f}%",
                           f"{statistics.mean(alphas):.4g}" if alphas else "—"]))
    return lines + [""]
