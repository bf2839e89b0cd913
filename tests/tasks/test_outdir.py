"""Output folders: staged into place whole, modarb's own replaced, anything of the user's refused and kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modarb_tasks.errors import ModarbError
from modarb_tasks.outdir import MANIFEST, OutputFolder, check_out, staged


def _tree(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_folder_appears_whole_with_its_manifest_and_its_files_as_written(tmp_path):
    out = tmp_path / "report"
    with staged(out) as folder:
        assert not out.exists() and folder.work.parent == tmp_path and folder.work.name.startswith(".report.partial-")
        (folder.work / "sub").mkdir()
        (folder.work / "sub" / "run.json").write_text(json.dumps({"written_in": str(folder.work)}))
        (folder.work / "report.md").write_text("done\n")
    assert json.loads((out / "sub" / "run.json").read_text()) == {"written_in": str(folder.work)}  # never rewritten
    assert json.loads((out / MANIFEST).read_text())["files"] == ["report.md", "sub/run.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_what_a_command_records_names_the_folder_as_the_user_gave_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with staged(Path("reports/demo")) as folder:
        assert folder.final == Path("reports/demo") and (folder / "flow").final == Path("reports/demo/flow")
        assert (folder / "flow").work == folder.work / "flow" and folder.work.parent == tmp_path / "reports"
    assert OutputFolder.of(Path("elsewhere")) == OutputFolder(Path("elsewhere"), Path("elsewhere"))  # written in place
    assert OutputFolder.of(folder) is folder


def test_an_earlier_modarb_folder_is_replaced_entirely(tmp_path):
    out = tmp_path / "report"
    with staged(out) as folder:
        (folder.work / "old.json").write_text("{}")
    with staged(out) as folder:
        (folder.work / "new.json").write_text("{}")
    assert sorted(_tree(out)) == [MANIFEST, "new.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("stop", [RuntimeError("a bug"), KeyboardInterrupt()])
def test_an_error_or_ctrl_c_leaves_the_earlier_folder_as_it_was_and_no_partial_one(tmp_path, stop):
    out = tmp_path / "report"
    with staged(out) as folder:
        (folder.work / "identify.json").write_text('{"earlier": true}')
    before = _tree(out)
    with pytest.raises(type(stop)):
        with staged(out) as folder:
            (folder.work / "spec_top5.json").write_text('{"new": true}')
            raise stop
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_a_folder_with_anything_modarb_did_not_write_is_refused_and_untouched(tmp_path):
    out = tmp_path / "mine"
    with staged(out) as folder:
        (folder.work / "flow.json").write_text("{}")
    (out / "notes.txt").write_text("mine\n")
    before = _tree(out)
    with pytest.raises(ModarbError, match="already holds notes.txt, which modarb did not write"):
        with staged(out):
            pytest.fail("the block must not run")
    assert _tree(out) == before
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "data.csv").write_text("1\n")
    with pytest.raises(ModarbError, match="already holds data.csv"):
        check_out(plain)


def test_a_file_as_out_is_refused_and_stays(tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep\n")
    with pytest.raises(ModarbError, match="is a file, not a folder"):
        check_out(target)
    assert target.read_text() == "keep\n" and [p.name for p in tmp_path.iterdir()] == ["results.txt"]


def test_an_empty_folder_may_be_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    with staged(out) as folder:
        (folder.work / "a.json").write_text("{}")
    assert sorted(_tree(out)) == [MANIFEST, "a.json"]
