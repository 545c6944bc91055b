"""metaaugment's report hook: the learned transformation distribution (the paper's Figure 2) as numbers.

Every MetaAugment run stores the sampler's final p_{j,k} (Eq. 5; `metrics.sampler_probs`, 14 x 14,
rows = first op, columns = second op in `common.augment.image_ops.OPS` order). Per setting and
method this section averages p over the seeds and shows each op's marginal probability (the mean of
its first-op and second-op marginals; uniform = 1/14 = 7.1%), the share of the five geometric ops
(uniform 5/14 = 35.7%: the paper finds them suppressed on Omniglot, not on CIFAR), the most and
least likely pairs, and the learned inner learning rate alpha.

The heat map (Figure 2's analog, `reports/figures/metaaugment_figure2.png`): the seed-mean 14 x 14 p
of `metaaugment` on CIFAR-10 (Table 1) and Omniglot (Table 3) side by side. The hook sees one table
at a time, so it keeps each table's panel (per profile) and redraws the file after each of the two
tables; `repro report` calls Table 1 before Table 3, so the final file has both. No MetaAugment
distribution in either table: no file (a stale one is removed), no error.
"""
from __future__ import annotations

import statistics
from pathlib import Path

GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
FIGURE2 = Path("reports/figures/metaaugment_figure2.png")
FIGURE2_TABLES = {"table1": "CIFAR-10", "table3": "Omniglot"}
FIGURE5_NOTE = ("Figure 5's analog: eps is Eq. 5's share of uniform sampling (metaaugment_eps0: the estimated "
                "distribution only; metaaugment: the table's eps, 0.1; metaaugment_eps1: uniform op pairs, the policy "
                "still weighting the samples). The paper's sweep is Omniglot WRN-28-10; the cpu sweep is CIFAR-10 "
                "ResNet-20, so only the text's ordering (0.1 above 1.0) is checked, under 'Stated in the paper's "
                "text'.")
_panels: dict[str, dict] = {}          # table -> {"profile", "setting", "n", "ops", "p"} (see the docstring)


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


def figure2_panel(runs: list[dict], method: str = "metaaugment") -> dict | None:
    """The panel of one table: the setting with the most `method` runs that stored p (ties: by name),
    its seed-mean p; None without such runs."""
    by_setting: dict[str, list[dict]] = {}
    for r in runs:
        if r.get("method") == method and r.get("metrics", {}).get("sampler_probs"):
            by_setting.setdefault(r["setting"], []).append(r)
    if not by_setting:
        return None
    setting = min(by_setting, key=lambda s: (-len(by_setting[s]), s))
    ops, p = mean_distribution(by_setting[setting])
    profile = (by_setting[setting][0].get("config") or {}).get("profile") or by_setting[setting][0].get("profile")
    return {"profile": profile, "setting": setting, "n": len(by_setting[setting]), "ops": ops, "p": p}


def draw_figure2(panels: dict[str, dict | None], path: Path = FIGURE2) -> bool:
    """Heat maps of p (in %, rows = first op, columns = second op) per data set, side by side; a data
    set without a panel is drawn as an empty frame saying so. False (and no file) without any panel."""
    if not any(panels.get(t) for t in FIGURE2_TABLES):
        path.unlink(missing_ok=True)
        return False
    from matplotlib.figure import Figure  # only when a figure is drawn (the report stage)

    fig = Figure(figsize=(13.5, 6.4), dpi=100)
    axes = fig.subplots(1, len(FIGURE2_TABLES), squeeze=False)[0]
    for ax, (table, name) in zip(axes, FIGURE2_TABLES.items()):
        panel = panels.get(table)
        if not panel:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{name}: no MetaAugment results yet", ha="center", va="center", transform=ax.transAxes)
            continue
        ops, k = panel["ops"], len(panel["ops"])
        grid = [[100 * v for v in row] for row in panel["p"]]
        image = ax.imshow(grid, cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(k), ops, rotation=90, fontsize=7)
        ax.set_yticks(range(k), ops, fontsize=7)
        ax.set_xlabel("second op k", fontsize=8)
        ax.set_ylabel("first op j", fontsize=8)
        ax.set_title(f"{name} ({panel['setting']}, {panel['profile']}, n = {panel['n']}); uniform = "
                     f"{100 / k ** 2:.2f}%", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label("p_{j,k} (%)", fontsize=8)
    fig.suptitle("metaaugment Figure 2 analog: the sampler's learned op-pair distribution (Eq. 5), mean over seeds",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return True


def _figure2_lines(table: str, runs: list[dict]) -> list[str]:
    panel = figure2_panel(runs)
    profiles = {r.get("profile") or (r.get("config") or {}).get("profile") for r in runs}
    if any(v and v["profile"] not in profiles | {None} for v in _panels.values()) and runs:
        _panels.clear()                                   # another profile's report: start over
    _panels[table] = panel
    if not draw_figure2(_panels):
        return []
    line = ("Heat map of p (Figure 2's analog; CIFAR-10 from Table 1 and Omniglot from Table 3 side by side): "
            f"`{FIGURE2.as_posix()}`.")
    return [line, ""] if panel else []


def report_sections(table: str, runs: list[dict], published: dict) -> list[str]:
    """Markdown lines after a table: per (setting, method) with sampler distributions, Figure 2's numbers
    (and, under Tables 1 and 3, the heat map file)."""
    figure = _figure2_lines(table, runs) if table in FIGURE2_TABLES else []
    if table == "figure5" and any(r.get("metrics", {}).get("sampler_probs") for r in runs):
        figure = [FIGURE5_NOTE, ""]
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        if r.get("metrics", {}).get("sampler_probs"):
            cells.setdefault((r["setting"], r["method"]), []).append(r)
    if not cells:
        return figure
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
    return lines + [""] + figure
