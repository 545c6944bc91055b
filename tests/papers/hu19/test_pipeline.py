"""End-to-end: `dvc repro` on the smoke profile in a temporary copy produces results, MLflow runs and reports."""
import os
import shutil
import subprocess
import time

import yaml

from tests.conftest import REPO


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    return [f for f in out if f and not f.startswith(("results/", "splits/", "reports/"))]


def own_files() -> dict[str, bytes]:
    """The repository's reports and paper READMEs (a smoke pipeline in a copy must not touch them)."""
    paths = [*(REPO / "reports").rglob("*.md"), *(REPO / "papers").glob("*/README.md")]
    return {str(p): p.read_bytes() for p in sorted(paths)}


def test_dvc_repro_smoke_end_to_end(tmp_path, mirror):
    work = tmp_path / "repo"
    for rel in tracked_files():
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    (work / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["base"].update(profile="smoke", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", data_mirror=mirror)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    env = {**os.environ, "PYTHONPATH": str(work)}     # the copy's code, not the editable install's checkout
    before = own_files()
    proc = subprocess.run(["dvc", "repro"], cwd=work, capture_output=True, text=True, timeout=2700, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = sorted((work / "results/smoke/hu19").glob("*/*/*/seed*.json"))
    # table2: 4 methods x 2 seeds; table4: 6 x 2 (with our variant); table1 (text, sst5 only): 7 x 2;
    # table3 (ratio_20): 7 x 2 (with our variant and ours_aug, the paper's text-only result)
    assert len(results) == 8 + 12 + 14 + 14
    report = (work / "reports/hu19.md").read_text()
    assert "Numbers produced by the `smoke` profile" in report
    assert "| Not-Pretrained | Base model: ResNet-34 |" in report and "| 20 : 1000 | Proportion |" in report
    assert (work / "reports/figures/hu19_table2.png").stat().st_size > 1000
    assert "hu19" in (work / "reports/index.md").read_text()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["hu19"], output_format="list")
    per_run = [r for r in runs if r.data.tags.get("stage") == "run"]
    assert len(per_run) == 48
    assert {r.data.tags["method"] for r in per_run} == {"base", "base_val", "proportion", "ren", "ours_weight",
                                                        "ours_weight_eq12", "synonym", "fixed_aug", "ours_aug"}
    assert "| 20 : 1000 | Ours, lookahead with Eq.-12 normalised weights (our variant) |" in report
    assert "| 20 : 1000 | Ours: fine-tuned augmentation | around 50 (random guess) |" in report
    assert (work / "artifacts/mlm/smoke/mlm_report.json").exists(), "the MLM stage ran"
    assert "## Performance: text" in report
    # the stage's MLM and its report exist; smoke text runs use tiny-random-bert's own head (mlm_dir: null),
    # so the report describes no MLM (it does when counted text results used one)
    assert (work / "reports/mlm/smoke.json").exists() and "## The MLM the text augmenter starts from" not in report
    assert any(r.data.tags.get("stage") == "aggregate" for r in runs)

    again = subprocess.run(["dvc", "repro"], cwd=work, capture_output=True, text=True, timeout=600, env=env)
    assert own_files() == before, "the run wrote into the repository it was copied from"
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout + again.stderr

    # A fresh clone of the finished state (results, splits, reports and dvc.lock committed; the MLM model
    # is git-ignored, as on main): the main job recomputes nothing and changes no committed file.
    gitignore = (work / ".gitignore").read_text().replace("results/smoke/\n", "").replace("splits/smoke/\n", "")
    (work / ".gitignore").write_text(gitignore)
    git = lambda *args, cwd=work: subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "finished smoke state")
    clone = tmp_path / "clone"
    git("clone", "-q", str(work), str(clone), cwd=tmp_path)
    assert not (clone / "artifacts").exists()
    started = time.monotonic()
    fresh = subprocess.run(["dvc", "repro"], cwd=clone, capture_output=True, text=True, timeout=600,
                           env={**env, "PYTHONPATH": str(clone)})
    assert time.monotonic() - started < 300, "the README promises the fresh-clone main job in minutes"
    output = fresh.stdout + fresh.stderr
    assert fresh.returncode == 0, output[-3000:]
    assert "Running stage" not in output and "didn't change, skipping" in output, output[-3000:]
    assert git("status", "--porcelain", cwd=clone).stdout == "", "the main job changed committed files"
    assert not (clone / "artifacts/mlm").exists(), "the MLM was rebuilt although no run needed it"
