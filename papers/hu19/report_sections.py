"""hu19's own lines in its report (the paper contract's `report_sections` hook): why `ours_weight`
runs diverge, and the Figure 2 analog (what the text augmenter substitutes) under table1."""
from __future__ import annotations

DIVERGENCE_NOTE = (
    "Why `ours_weight` diverges: as in the official code, the lookahead uses the raw persistent "
    "weights, theta' = theta + sum_i phi_i Delta_i, not the normalised ones of Eq. 12; an "
    "example whose phi_i grows moves theta' further, which enlarges its next meta-gradient "
    "(phi_i <- phi_i / w_decay - grad_i), until phi overflows (max phi above).")


def report_sections(table: str, runs: list[dict], published: dict) -> list[str]:
    """Markdown lines after a table's orderings: the divergence note if an `ours_weight` run of the
    table diverged, and the Figure 2 analog under table1."""
    lines = []
    if any(r.get("diverged") and r["method"] == "ours_weight" for r in runs):
        lines += [DIVERGENCE_NOTE, ""]
    if table == "table1":
        lines += figure2_section(published, [r for r in runs if r["method"] == "ours_aug"])
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def row(values):
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"
    return [row(header), row(["---"] * len(header)), *map(row, rows)]


def figure2_section(published: dict, runs: list[dict]) -> list[str]:
    """Figure 2 analog: the augmenter's top-5 substitutions, paper vs ours (first ours_aug run that
    recorded them, i.e. the lowest SST-5 seed)."""
    paper_fig = published.get("figure2")
    recorded = sorted((r for r in runs if r.get("figure2")), key=lambda r: r["seed"])
    if not paper_fig or not recorded:
        return []
    run = recorded[0]
    ours = run["figure2"]
    epochs = sorted((k for k in ours if k.startswith("epoch_")), key=lambda k: int(k.split("_")[1]))
    masked = " and ".join(f'"{w}"' for w in paper_fig["fills"])
    rows = []
    for word, by_epoch in paper_fig["fills"].items():
        for epoch in epochs:
            paper_words = ", ".join(by_epoch.get(epoch, [])) or "—"
            rows.append([word, epoch.replace("epoch_", ""), paper_words, ", ".join(ours[epoch].get(word, []))])
    return [f"### Figure 2 analog: what the augmenter substitutes ({run['method']}, {run['setting']}, seed "
            f"{run['seed']})", "",
            f"Sentence: \"{ours['sentence']}\" (label {paper_fig['label']}), {masked} masked; top-5 fills, "
            "most probable first. Epoch 0 is the CBERT fitted on the train set before joint "
            "training (what `fixed_aug` uses throughout).", "",
            *_table(["masked word", "epoch", "paper", "ours"], rows), ""]
