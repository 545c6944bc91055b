"""The report says which MLM the text results used: the committed MLM's weights hash vs each result's."""
import json

from pipelines.reports.markdown import render_mlm


def test_the_report_names_the_mlm_behind_the_text_results(tmp_path):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"backbone": "all-MiniLM-L6-v2", "steps": 600, "threads": 2, "weights_sha256": "a" * 64,
                                "fills": {"a [MASK] movie": ["good", "bad"]}}))
    text = render_mlm(path, {"a" * 64: 40, "b" * 64: 2, None: 3})
    assert f"MLM weights sha256: `{'a' * 64}`, trained with 2 threads." in text
    assert "- 40 counted text result(s) used this MLM." in text
    assert f"- 2 counted text result(s) used another MLM, `{'b' * 12}`." in text
    assert "- 3 counted text result(s) used an MLM whose hash was not recorded" in text
    path.write_text(json.dumps({"backbone": "x"}))                       # a report from before identities
    old = render_mlm(path, {})
    assert "not recorded (built before MLM identities were kept)" in old and "No counted text result used" in old
