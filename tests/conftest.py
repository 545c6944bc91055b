import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Decoded-array cache shared by the session, never the user's ~/.cache."""
    monkeypatch.setenv("REPRO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "repro_cache"))


@pytest.fixture
def mirror() -> str:
    path = os.environ.get("REPRO_DATA_MIRROR")
    if not path or not (Path(path) / "cifar10").is_dir():
        pytest.skip("REPRO_DATA_MIRROR with cifar10/ is needed (CI sets it)")
    return path


@pytest.fixture
def smoke_params(tmp_path, mirror) -> dict:
    """params.yaml on the smoke profile: results and splits in tmp_path, no tracking, one worker."""
    from common.config import load_params
    p = load_params(REPO / "params.yaml")
    p["base"].update(results_dir=str(tmp_path / "results"), splits_dir=str(tmp_path / "splits"),
                     tracking_uri="none", data_mirror=mirror, profile="smoke")
    p["base"]["runner"].update(workers=1)
    return p


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (to show nothing was modified or deleted); {} if root is absent."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


DROP = object()   # a `params_edit` value: remove the key


def params_edit(paper: str, table: str, key: str, value, profile: str = "smoke"):
    """A mutation of params.yaml: `<paper>.profiles.<profile>.<table>.<key> = value` (DROP removes the key)."""
    def mutate(p: dict) -> None:
        block = p[paper]["profiles"][profile][table]
        if value is DROP:
            block.pop(key)
        else:
            block[key] = value
    return mutate


def check_params_error(tmp_path: Path, capsys, paper: str, mutate, message: str | None) -> None:
    """`repro run --paper <paper> --profile smoke --dry-run` on params.yaml edited by `mutate`: exit 0 if
    `message` is None, else exit 2 with one `error: params.yaml: <paper>.profiles.smoke.<message>` line, no
    traceback and no result written."""
    import yaml

    from common.config import load_params
    from pipelines import cli
    p = load_params(REPO / "params.yaml")
    p["base"].update(results_dir=str(tmp_path / "results"), splits_dir=str(tmp_path / "splits"), tracking_uri="none")
    mutate(p)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    code = cli.main(["--params", str(path), "run", "--paper", paper, "--profile", "smoke", "--dry-run"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        return
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"error: params.yaml: {paper}.profiles.smoke.{message}" in err, err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*.json"))


def repro(capsys, *argv) -> tuple[int, str, str]:
    """`repro <argv>` in this process: (exit code, stdout, stderr)."""
    from pipelines import cli
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def one_thread():
    """torch on one thread for the test (MLM training numbers are compared across runs)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Interrupt(Exception):
    """A kill between epochs (raised from an `on_epoch` callback)."""


def killed_and_resumed(execute, checkpoint_path: Path, **kwargs) -> tuple[list[int], list[int], dict]:
    """Run `execute(**kwargs, checkpoint_path=...)`, killed right after its first epoch, then again from
    the checkpoint: (epochs before the kill, epochs of the resumed run, the resumed result)."""
    before, after = [], []

    def killed(row):
        before.append(row["epoch"])
        raise Interrupt

    with pytest.raises(Interrupt):
        execute(**kwargs, on_epoch=killed, checkpoint_path=checkpoint_path)
    assert checkpoint_path.exists(), "no checkpoint left by the killed run"
    resumed = execute(**kwargs, on_epoch=lambda row: after.append(row["epoch"]), checkpoint_path=checkpoint_path)
    return before, after, resumed
