"""Progress bars: on for terminals or REPRO_PROGRESS=1, quiet in CI; epoch bar counts epochs."""
from common.run.progress import progress_bar, progress_enabled


def test_enabled_by_flag_and_quiet_in_ci(monkeypatch):
    monkeypatch.setenv("REPRO_PROGRESS", "1")
    assert progress_enabled()
    monkeypatch.setenv("REPRO_PROGRESS", "0")
    assert not progress_enabled()
    monkeypatch.delenv("REPRO_PROGRESS")
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled()


def test_bar_reports_eta_when_enabled(capsys):
    with progress_bar(4, "runs", "run", enabled=True) as bar:
        for _ in range(4):
            bar.update(1)
    err = capsys.readouterr().err
    assert "runs" in err and "4/4" in err
    with progress_bar(4, "runs", "run", enabled=False) as bar:
        bar.update(4)
    assert capsys.readouterr().err == ""
