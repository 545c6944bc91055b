"""influence's report hook: what Alg. 1's learned part did, per table, and the retraining check.

The paper's claim rests on E lowering I_aug (Eq. 15) with a G that makes real transformations, so after each
table the report shows, for the `proposed` runs: the fixed G (file, sha256, GAN steps, how far its samples move
pixels and coordinates at the end of training) and, per encoder round, the batch mean of I_aug at E's first and
last step (averaged over the runs; negative and falling = E finds samples predicted to lower the validation
loss). After Table 1 it adds the retraining check (predicted vs actual leave-one-out change of the validation
loss) if `python3 -m papers.influence.retraining --profile <profile>` has written its JSON, and the toy study's
verdicts (Fig. 3); after each table the tau strip of its G (Fig. 4) when those commands have written their files.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

RETRAINING_DIR = Path("reports/influence_retraining")
FIGURES_DIR = Path("reports/figures")


def _row(values) -> str:
    return "| " + " | ".join(str(v) for v in values) + " |"


def _mean(values) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.mean(values):.4g}" if values else "—"


def encoder_rows(spec: dict, runs: list[dict]) -> list[list[str]]:
    rows = []
    for setting in spec["results"]:
        mine = [r for r in runs if r["setting"] == setting and r["method"] == "proposed"]
        logs = [r["metrics"].get("encoder_log") or [] for r in mine]
        for k in range(max((len(log) for log in logs), default=0)):
            at = [log[k] for log in logs if len(log) > k]
            rows.append([spec["settings"][setting]["label"], k + 1, _mean(r["epoch"] for r in at),
                         _mean(r["i_aug_first"] for r in at), _mean(r["i_aug_last"] for r in at),
                         _mean(r["seconds"] for r in at), len(at)])
    return rows


def generator_lines(runs: list[dict]) -> list[str]:
    seen = {}
    for r in runs:
        g = r["metrics"].get("transform")
        if r["method"] == "proposed" and g:
            seen[g["sha256"]] = g
    lines = []
    for g in seen.values():
        last = (g.get("history") or [{}])[-1]
        lines.append(f"- G `{g['path']}` (sha256 {g['sha256'][:12]}…): {last.get('step', '?')} WGAN-GP steps on "
                     f"{g.get('images', '?')} images; at the end, rms displacement "
                     f"{last.get('disp_rms', float('nan')):.3g} "
                     f"(normalised coordinates) and rms pixel change {last.get('image_rms_change', float('nan')):.3g}.")
    return lines


def retraining_lines(profile: str | None) -> list[str]:
    path = RETRAINING_DIR / f"{profile or '<profile>'}.json"
    if profile is None or not path.exists():   # no runs: the hook is not told the profile
        return [(f"Retraining check: {'not run for this profile' if profile else 'shown once the table has runs'} "
                 f"(`python3 -m papers.influence.retraining --profile {profile or '<profile>'}` writes {path})."), ""]
    report = json.loads(path.read_text())
    header = ["model", "parameters", "removed points", "Pearson", "Spearman", "damping", "CG iterations"]
    rows = [[name, m["parameters"], m["n_points"], f"{m['pearson']:.3f}", f"{m['spearman']:.3f}", m["damping"],
             m["solve"]["iterations"]] for name, m in report["models"].items()]
    return [("Retraining check (Eq. 10: predicted -I_up,loss / N vs leave-one-out retraining to convergence, MNIST "
            f"{report['classes'][0]} vs {report['classes'][1]}; scatter plot `{path.with_suffix('.png')}`):"), "",
            _row(header), _row(["---"] * len(header)), *map(_row, rows), ""]


def figure_lines(table: str, profile: str | None) -> list[str]:
    """The toy study (Fig. 3, after Table 1) and the tau strip of the table's G (Fig. 4), when their files exist."""
    if profile is None:
        return []
    lines = []
    toy = FIGURES_DIR / ("influence_figure3.json" if profile == "cpu" else f"influence_figure3_{profile}.json")
    if table == "table1" and toy.exists():
        report = json.loads(toy.read_text())
        head = (f"Toy 2D study (Fig. 3 analog, `python3 -m papers.influence.toy --profile {profile}`; figure "
                f"`{toy.with_suffix('.png')}`):")
        lines += [head, "", *[f"- {v}" for v in report["verdicts"]], ""]
    dataset = {"table1": "mnist", "table2": "cifar10"}.get(table)
    strip = FIGURES_DIR / f"influence_figure4_{dataset}_{profile}.png"
    if strip.exists():
        lines += [f"Tau interpolation strip of this table's G (Appendix C, Fig. 4 analog): `{strip}`.", ""]
    return lines


def report_sections(table: str, runs: list[dict], published: dict) -> list[str]:
    """Markdown lines after a table's orderings: G, the encoder rounds of Proposed, the retraining check."""
    spec = published["tables"][table]
    lines = []
    rows = encoder_rows(spec, runs)
    if rows:
        header = ["setting", "round", "at epoch", "mean I_aug, first E step", "mean I_aug, last E step",
                  "seconds", "runs"]
        lines += [("Alg. 1's encoder rounds of Proposed (E minimises the batch mean of I_aug, Eq. 15; lower = samples "
                  "predicted to lower the validation loss more):"), "", *generator_lines(runs), "",
                  _row(header), _row(["---"] * len(header)), *map(_row, rows), ""]
    profile = runs[0].get("profile") if runs else None
    if table == "table1":
        lines += retraining_lines(profile)
    return lines + figure_lines(table, profile)
