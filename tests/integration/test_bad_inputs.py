"""Every bad input of docs/bad_inputs.md: one clear message naming the file/key and the fix, no result lost.

CLI cases go through `pipelines.cli.main([...])` in this process and check exit code 2, a single
`error: ...` line on stderr and no traceback. Cases that would train use a stand-in for hu19's
`execute` (nothing here trains a model), so they need neither the data mirror nor CPU time.
"""
import gzip
import json
import logging
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from common.config import config_hash, load_params
from common.data.cifar10 import SHA256, _read_npz, load_cifar10
from common.data.subsample import SplitSpec, load_or_make_split
from common.data.text import read_jsonl
from common.errors import ConfigError, DataError
from common.models import build_image_model
from common.train.checkpoint import RunCheckpoint
from papers.hu19 import tables
from pipelines import cli
from pipelines.grid import table_configs
from tests.conftest import REPO, repro, tree

RUN = ["run", "--profile", "smoke", "--table", "table2"]
BASE0 = "smoke/hu19/table2/not_pretrained/base/seed0.json"
KEEPER = "smoke/hu19/table4/ratio_20/base/seed0.json"     # a finished result outside every grid run here


# --- helpers ------------------------------------------------------------------------------------------

def result_payload(h: str, **extra) -> dict:
    return {"paper": "hu19", "table": "table2", "setting": "not_pretrained", "method": "base", "seed": 0,
            "profile": "smoke", "config_hash": h, "git_sha": "abc", "metrics": {"test_acc": 12.5, "steps_at_best": 2},
            "wall_s": 1.0, "finished_at": "2026-01-01T00:00:00+00:00", **extra}


def write_params(work: Path, mutate=None, text_edit=None, **base) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(results_dir=str(work / "results"), splits_dir=str(work / "splits"), tracking_uri="none",
                          data_mirror=str(work / "no_mirror"), profile="smoke")
    params["base"]["runner"].update(workers=1)
    params["base"].update(base)
    if mutate:
        mutate(params)
    text = yaml.safe_dump(params, sort_keys=False)
    if text_edit:
        old, new = text_edit
        assert old in text
        text = text.replace(old, new)
    path = work / "params.yaml"
    path.write_text(text)
    return path


def assert_clear_error(code: int, err: str, pattern: str) -> None:
    """Exit 2, exactly one `error: ...` line matching `pattern`, no traceback, no per-run FAILED lines."""
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert re.search(pattern, errors[0]), f"{pattern!r} not in {errors[0]!r}"
    assert "Traceback" not in err and "FAILED" not in err, err


@pytest.fixture
def work(tmp_path):
    """A tmp project: params.yaml pointing at tmp results/splits, and one finished result to keep."""
    write_params(tmp_path)
    keeper = tmp_path / "results" / KEEPER
    keeper.parent.mkdir(parents=True)
    keeper.write_text(json.dumps(result_payload("feedfacefeedface", table="table4", setting="ratio_20")))
    return tmp_path


@pytest.fixture
def fake_execute(monkeypatch):
    """hu19's `execute` replaced by an instant stand-in; the list records the configs it was asked to run."""
    calls = []

    def execute(config, mirror, **_):
        calls.append(config)
        return {"metrics": {"test_acc": 50.0, "steps_at_best": 2}, "history": []}

    monkeypatch.setattr(tables, "execute", execute)
    return calls


def current_hash(params_path: Path, method="base", seed=0) -> str:
    configs = table_configs(load_params(params_path), "hu19", "smoke", "table2")
    return config_hash(next(c for c in configs if c["method"] == method and c["seed"] == seed))


# --- 1. unknown ids on the command line ---------------------------------------------------------------

@pytest.mark.parametrize("args,pattern", [
    pytest.param(["--paper", "hu20"],
                 r"unknown paper 'hu20'; known papers: \['hu19', 'influence', 'metaaugment', 'mmel'\]", id="paper"),
    pytest.param(["--table", "table9"], r"--table: unknown table 'table9' for hu19 profile 'smoke'; known tables",
                 id="table"),
    pytest.param(["--method", "magic"], r"no run matches setting=None method=magic seed=None; available: .*'method': "
                                        r"\['base', 'base_val', 'ours_weight', 'ren'\]", id="method"),
    pytest.param(["--profile", "gpu"], r"--profile: unknown profile 'gpu'; expected one of \['smoke', 'cpu', 'paper'\]",
                 id="profile"),
    pytest.param(["--setting", "pretrained"], r"no run matches setting=pretrained .*'setting': \['not_pretrained'\]",
                 id="setting"),
    pytest.param(["--seed", "7"], r"no run matches .*seed=7; available: .*'seed': \['0', '1'\]", id="seed"),
    pytest.param(["--workers", "0"], r"--workers: expected a number >= 1, got 0", id="workers-zero"),
])
def test_cli_unknown_ids(work, capsys, args, pattern):
    before = tree(work / "results")
    argv = RUN + args
    if "--profile" in args:  # the given profile replaces the default one
        argv = ["run", "--table", "table2"] + args
    code, _, err = repro(capsys, "--params", work / "params.yaml", *argv, "--dry-run")
    assert_clear_error(code, err, pattern)
    assert tree(work / "results") == before


def test_cli_workers_zero_without_dry_run(work, capsys, fake_execute):
    """Before the fix a real run with --workers 0 died with a raw ValueError from the process pool."""
    code, _, err = repro(capsys, "--params", work / "params.yaml", *RUN, "--workers", "0")
    assert_clear_error(code, err, r"--workers: expected a number >= 1, got 0")
    assert fake_execute == []


def test_cli_usage_error_is_argparse_exit_2(work, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--params", str(work / "params.yaml"), *RUN, "--seed", "one"])
    assert exc.value.code == 2
    assert "argument --seed: invalid int value: 'one'" in capsys.readouterr().err


# --- 2. params.yaml: wrong types, unknown and missing keys ---------------------------------------------

def table2(p):
    return p["hu19"]["profiles"]["smoke"]["table2"]


PARAMS_CASES = [
    pytest.param(dict(mutate=lambda p: p["base"]["runner"].update(workers="two")),
                 r"params\.yaml: base\.runner\.workers: expected int, got str 'two'$", id="workers-string"),
    pytest.param(dict(mutate=lambda p: p["base"]["runner"].update(workers="2")),
                 r"base\.runner\.workers: expected int, got str '2' \(a quoted number is text in YAML: write 2 "
                 r"without quotes\)", id="workers-quoted-number"),
    pytest.param(dict(mutate=lambda p: p["base"]["runner"].update(workers=0)),
                 r"base\.runner\.workers: expected >= 1, got 0", id="workers-zero"),
    pytest.param(dict(mutate=lambda p: table2(p).update(epochs="2")),
                 r"hu19\.profiles\.smoke\.table2\.epochs: expected int, got str '2' \(a quoted number",
                 id="epochs-string"),
    pytest.param(dict(text_edit=("lr: 0.001", "lr: 1e-3")),
                 r"hu19\.profiles\.smoke\.table2\.lr: expected float, got str '1e-3' \(YAML reads 1e-3 as text: write "
                 r"0\.001-style decimals, or exponents with a dot and a signed exponent such as 1\.0e-3\)",
                 id="lr-1e-3"),
    pytest.param(dict(text_edit=("weight_decay: 0.01", "weight_decay: 5e-4")),
                 r"table2\.weight_decay: expected float, got str '5e-4' \(YAML reads 5e-4 as text",
                 id="weight-decay-5e-4"),
    pytest.param(dict(mutate=lambda p: table2(p)["weighting"].update(softmax_temp="10")),
                 r"table2\.weighting\.softmax_temp: expected float, got str '10'", id="weighting-string"),
    pytest.param(dict(mutate=lambda p: table2(p).update(methods="base")),
                 r"table2\.methods: expected list, got str 'base'", id="methods-not-a-list"),
    pytest.param(dict(mutate=lambda p: table2(p).pop("momentum")),
                 r"hu19\.profiles\.smoke\.table2\.momentum: missing \(expected float\)$", id="momentum-missing"),
    pytest.param(dict(mutate=lambda p: p["base"].update(colour="red")),
                 r"base: unknown key\(s\) \['colour'\]; known: \[", id="unknown-base-key"),
    pytest.param(dict(mutate=lambda p: p["base"]["runner"].update(wokers=p["base"]["runner"].pop("workers"))),
                 r"base\.runner: unknown key\(s\) \['wokers'\]; known: \[.*'workers'", id="misspelt-runner-key"),
    pytest.param(dict(mutate=lambda p: table2(p).update(epoch=2)),
                 r"table2: unknown key\(s\) \['epoch'\]; known: \[", id="unknown-table-key"),
    pytest.param(dict(mutate=lambda p: table2(p).update(methods=["base", "magic"])),
                 r"table2\.methods: unknown method\(s\) \['magic'\] for table2; expected a subset of",
                 id="unknown-method"),
    pytest.param(dict(mutate=lambda p: table2(p)["settings"].update(ratio_20={"minority": 2})),
                 r"table2\.settings: unknown setting 'ratio_20' for table2; expected one of", id="unknown-setting"),
    pytest.param(dict(mutate=lambda p: p["base"].update(profile="gpu")),
                 r"base\.profile: unknown profile 'gpu'; expected one of", id="unknown-profile"),
]


@pytest.mark.parametrize("edit,pattern", PARAMS_CASES)
def test_bad_params_yaml(work, capsys, edit, pattern):
    path = write_params(work, **edit)
    before = tree(work / "results")
    code, _, err = repro(capsys, "--params", path, "run", "--table", "table2", "--dry-run")  # base.profile: smoke
    assert_clear_error(code, err, pattern)
    assert tree(work / "results") == before


def test_weight_decay_string_used_to_fail_every_run(work, fake_execute, capsys):
    """Not only the dry run: a real run stops at validation, before any run starts."""
    path = write_params(work, text_edit=("weight_decay: 0.01", "weight_decay: 5e-4"))
    code, _, err = repro(capsys, "--params", path, *RUN)
    assert_clear_error(code, err, r"weight_decay: expected float, got str '5e-4'")
    assert fake_execute == []


@pytest.mark.parametrize("content,pattern", [
    pytest.param(None, r"nope\.yaml: params file not found \(run from the repository root or pass --params\)",
                 id="missing"),
    pytest.param("base: [unclosed\n", r"params\.yaml: not valid YAML: ", id="invalid-yaml"),
    pytest.param("- just\n- a list\n", r"params\.yaml: expected a mapping with a `base` group", id="not-a-mapping"),
])
def test_params_file_missing_or_invalid(tmp_path, capsys, content, pattern):
    path = tmp_path / ("nope.yaml" if content is None else "params.yaml")
    if content is not None:
        path.write_text(content)
    code, _, err = repro(capsys, "--params", path, *RUN, "--dry-run")
    assert_clear_error(code, err, pattern)


# --- 3. data ------------------------------------------------------------------------------------------

def test_mirror_folder_missing(work, capsys):
    before = tree(work / "results")
    code, _, err = repro(capsys, "--params", work / "params.yaml", *RUN, "--method", "base", "--seed", "0")
    assert_clear_error(code, err, r"no_mirror/cifar10: no cifar10 folder in the data mirror REPRO_DATA_MIRROR=")
    assert tree(work / "results") == before


def test_mirror_folder_missing_with_two_workers(work, capsys):
    """Default runner (a process pool): one error and exit 2, not one FAILED line per run (fixed)."""
    path = write_params(work, mutate=lambda p: p["base"]["runner"].update(workers=2))
    before = tree(work / "results")
    code, _, err = repro(capsys, "--params", path, *RUN)
    assert_clear_error(code, err, r"no_mirror/cifar10: no cifar10 folder in the data mirror")
    assert tree(work / "results") == before


def _offline(*args, **kwargs):
    raise urllib.error.URLError("network is unreachable")


def test_no_mirror_and_no_network(work, capsys, monkeypatch):
    import torchvision

    monkeypatch.delenv("REPRO_DATA_MIRROR", raising=False)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _offline)
    path = write_params(work, data_mirror=None)
    before = tree(work / "results")
    code, _, err = repro(capsys, "--params", path, *RUN, "--method", "base", "--seed", "0")
    assert_clear_error(code, err, r"CIFAR-10: REPRO_DATA_MIRROR is not set and downloading the official archive "
                                  r"failed \(URLError: .*network is unreachable.*\); set REPRO_DATA_MIRROR to a folder "
                                  r"holding cifar10/\*\.npz")
    assert tree(work / "results") == before


def fake_mirror(root: Path) -> Path:
    folder = root / "mirror" / "cifar10"
    folder.mkdir(parents=True)
    for name in SHA256:
        np.savez(folder / name, x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, np.int64))
    return root / "mirror"


def test_checksum_mismatch(tmp_path):
    with pytest.raises(DataError, match=r"cifar10/train_1\.npz: checksum mismatch \(sha256 [0-9a-f]{64}, expected "
                                        r"2a51ef72[0-9a-f]{56}\); the file is corrupt or not the published version: "
                                        r"replace it from the official source or unset REPRO_DATA_MIRROR to download"):
        load_cifar10(str(fake_mirror(tmp_path)))


def test_truncated_npz(tmp_path):
    mirror = fake_mirror(tmp_path)
    npz = mirror / "cifar10" / "train_1.npz"
    np.savez(npz, x=np.zeros((500, 32, 32, 3), np.uint8), y=np.zeros(500, np.int64))
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])   # a download cut short
    with pytest.raises(DataError, match=r"train_1\.npz: checksum mismatch"):
        load_cifar10(str(mirror))
    # behind the checksum gate, the reader would name the file too (no zipfile traceback)
    with pytest.raises(DataError, match=r"train_1\.npz: cannot read \(expected an npz with keys x, y\)"):
        _read_npz(npz)


@pytest.mark.parametrize("lines,pattern", [
    pytest.param(['{"text": "a", "label": 1}', '{"text": "b", "lab'],
                 r"train\.jsonl: line 2 is not valid JSON \(.*\); expected one object "
                 r"\{\"text\": str, \"label\": int\} "
                 r"per line \(corrupt or truncated file\?\)", id="jsonl-bad-line"),
    pytest.param(['{"text": "a", "label": 1}', '{"text": "b", "label": "positive"}'],
                 r"train\.jsonl: line 2: expected an object \{\"text\": str, \"label\": int\}, got ",
                 id="jsonl-bad-record"),
    pytest.param(None, r"train\.jsonl\.gz: cannot read past line \d+ \(EOFError", id="jsonl-gz-truncated"),
])
def test_corrupt_jsonl(tmp_path, lines, pattern):
    if lines is None:
        path = tmp_path / "train.jsonl.gz"
        blob = gzip.compress("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n"
                                     for i in range(2000)).encode())
        path.write_bytes(blob[: len(blob) // 2])
    else:
        path = tmp_path / "train.jsonl"
        path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=pattern):
        read_jsonl(path)


def test_missing_pretrained_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))   # an empty torch hub cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(ConfigError, match=r"pretrained resnet18: cannot load ImageNet weights \(.*network is "
                                          r"unreachable.*\); they must be in the torch hub cache \(\$TORCH_HOME\) on "
                                          r"machines without internet"):
        build_image_model("resnet18", 10, pretrained=True)


def test_missing_pretrained_weights_from_the_cli(work, capsys, monkeypatch, mirror):
    """A `pretrained` setting on a machine without the weights: one error, the grid stops, results kept."""
    monkeypatch.setenv("TORCH_HOME", str(work / "torch_home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    path = write_params(work, mutate=lambda p: table2(p)["settings"].update(pretrained={"pretrained": True}),
                        data_mirror=mirror)
    before = tree(work / "results")
    code, _, err = repro(capsys, "--params", path, *RUN, "--setting", "pretrained", "--method", "base", "--seed", "0")
    assert_clear_error(code, err, r"pretrained resnet18: cannot load ImageNet weights .*torch hub cache")
    assert tree(work / "results") == before


# --- 4. results, splits, checkpoints ------------------------------------------------------------------

def unwritable_parent(tmp_path: Path) -> Path:
    """A folder nothing can be created in: read-only for normal users; for root (which ignores mode bits)
    a path whose parent is a regular file."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        (ro / "probe").mkdir()
    except PermissionError:
        return ro
    (ro / "probe").rmdir()
    ro.chmod(0o700)
    blocker = tmp_path / "a_regular_file"
    blocker.write_text("not a folder\n")
    return blocker


@pytest.mark.parametrize("key", ["results_dir", "splits_dir"])
def test_unwritable_results_or_splits_dir(work, capsys, fake_execute, key):
    parent = unwritable_parent(work)
    try:
        path = write_params(work, **{key: str(parent / key)})
        code, _, err = repro(capsys, "--params", path, *RUN, "--method", "base", "--seed", "0")
    finally:
        if parent.is_dir():
            parent.chmod(0o700)
    assert_clear_error(code, err, rf"base\.{key}: cannot write to {parent / key} \(\w+Error: .*\); set base\.{key} in "
                                  r"the params file to a folder you can write to")
    assert fake_execute == [], "nothing ran (before the fix the run trained first, then failed writing)"


def test_result_with_another_config_hash(work, capsys, fake_execute):
    path = work / "results" / BASE0
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result_payload("0123456789abcdef")))
    before = tree(work / "results")
    params = work / "params.yaml"
    code, _, err = repro(capsys, "--params", params, *RUN, "--method", "base", "--seed", "0")
    assert_clear_error(code, err, rf"{BASE0}: exists with config_hash 0123456789abcdef but the current config hashes "
                                  rf"to {current_hash(params)}; the finished result is kept\. Re-run with "
                                  r"--replace-changed to archive it and run again, or restore the config")
    assert fake_execute == [] and tree(work / "results") == before


def test_replace_changed_archives_the_old_result(work, capsys, fake_execute):
    path = work / "results" / BASE0
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(result_payload("0123456789abcdef")))
    before = tree(work / "results")
    params = work / "params.yaml"
    # a dry run lists the run but moves nothing (it used to archive the result already)
    code, out, _ = repro(capsys, "--params", params, *RUN, "--method", "base", "--seed", "0", "--replace-changed",
                         "--dry-run")
    assert code == 0 and "1 run(s) would run" in out and "nothing ran" in out
    assert re.search(r"^would run hu19/.*/base/seed0$", out, re.M), out
    assert tree(work / "results") == before
    code, out, err = repro(capsys, "--params", params, *RUN, "--method", "base", "--seed", "0", "--replace-changed")
    assert code == 0, err
    after = tree(work / "results")
    archived = BASE0.replace("seed0.json", "seed0.superseded-0123456789abcdef.json")
    assert after[archived] == before[BASE0]                      # the old result, byte for byte
    assert json.loads(after[BASE0])["config_hash"] == current_hash(params)
    assert {k: v for k, v in after.items() if k not in (BASE0, archived) and "/code_diffs/" not in k} == \
        {k: v for k, v in before.items() if k != BASE0}         # nothing else touched (a dirty checkout's
    # run also stores its code diff under code_diffs/, by content hash)
    assert len(fake_execute) == 1


@pytest.mark.parametrize("content,pattern", [
    pytest.param('{"paper": "hu19", "metr', r"corrupt result file \(.*\); move it away to re-run", id="corrupt-json"),
    pytest.param('{"paper": "hu19"}', r"result file lacks keys \['table', .*\]; move it away to re-run",
                 id="missing-keys"),
])
@pytest.mark.parametrize("replace", [False, True], ids=["plain", "replace-changed"])
def test_corrupt_result_file(work, capsys, fake_execute, content, pattern, replace):
    path = work / "results" / BASE0
    path.parent.mkdir(parents=True)
    path.write_text(content)
    before = tree(work / "results")
    extra = ["--replace-changed"] if replace else []
    for dry in (["--dry-run"], []):
        code, _, err = repro(capsys, "--params", work / "params.yaml", *RUN, "--method", "base", "--seed", "0",
                             *extra, *dry)
        assert_clear_error(code, err, BASE0.replace(".", r"\.") + ": " + pattern)
    assert fake_execute == [] and tree(work / "results") == before


LABELS = np.tile(np.arange(10), 60)
TEST_LABELS = np.arange(100) % 10
SPEC = SplitSpec("toy", tuple(range(10)), (4,) * 10, 2, 100)


@pytest.mark.parametrize("content,pattern", [
    pytest.param("{not json", r"split\.json: corrupt split index file \(.*\); delete it to re-create", id="corrupt"),
    pytest.param(None, r"split\.json: prepared split differs from the one drawn now for the same spec and data seed; "
                       r"delete it \(and re-run prepare\) if the spec changed on purpose", id="differs"),
])
def test_bad_split_index_file(tmp_path, content, pattern):
    path = tmp_path / "split.json"
    if content is None:
        load_or_make_split(path, LABELS, TEST_LABELS, SPEC, 160)   # a split drawn with another data seed
    else:
        path.write_text(content)
    before = path.read_bytes()
    with pytest.raises(DataError, match=pattern):
        load_or_make_split(path, LABELS, TEST_LABELS, SPEC, 159)
    assert path.read_bytes() == before


def bad_checkpoint(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        RunCheckpoint(path, "h").save({"run": {"epoch_done": 1}})
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "foreign-config":
        RunCheckpoint(path, "another-config").save({"run": {"epoch_done": 1}})
    elif kind == "not-a-checkpoint":
        torch.save(torch.zeros(3), path)      # before the fix: AttributeError inside the run


@pytest.mark.parametrize("kind,pattern", [
    pytest.param("truncated", r"run\.pt: unreadable checkpoint \(.*\); starting the run from scratch", id="truncated"),
    pytest.param("foreign-config", r"run\.pt: checkpoint of another config \(another-config\); starting from scratch",
                 id="foreign-config"),
    pytest.param("not-a-checkpoint", r"run\.pt: not a run checkpoint \(a Tensor\); starting the run from scratch",
                 id="not-a-checkpoint"),
])
def test_bad_checkpoint_restarts_from_scratch(tmp_path, caplog, kind, pattern):
    from tests.integration.test_resume import run_selection

    reference = run_selection(None)
    path = tmp_path / "ckpt" / "run.pt"
    bad_checkpoint(path, kind)
    with caplog.at_level(logging.WARNING, logger="repro.checkpoint"):
        resumed = run_selection(RunCheckpoint(path, "h"))
    assert any(re.search(pattern, r.getMessage()) for r in caplog.records), caplog.text
    assert (resumed.test_acc, resumed.history) == (reference.test_acc, reference.history)
    assert RunCheckpoint(path, "h").load()["run"]["epoch_done"] == 8  # replaced by the run's own checkpoint


def test_unwritable_checkpoint_folder_does_not_fail_the_run(tmp_path, caplog):
    from tests.integration.test_resume import run_selection

    reference = run_selection(None)
    path = unwritable_parent(tmp_path) / ".checkpoints" / "run.pt"
    try:
        with caplog.at_level(logging.WARNING, logger="repro.checkpoint"):
            result = run_selection(RunCheckpoint(path, "h"))
    finally:
        if path.parents[1].is_dir():
            path.parents[1].chmod(0o700)
    assert "checkpoint not written" in caplog.text and "the run goes on without it" in caplog.text
    assert (result.test_acc, result.history) == (reference.test_acc, reference.history)
