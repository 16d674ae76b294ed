"""hqm.output: the files convert / export / eval --save-predictions write never harm the user's."""

from __future__ import annotations

import errno
import os

import pytest

from hqm.errors import OutputError, UsageError
from hqm.output import check_new_output, replacing, write_atomic


def test_write_atomic_creates_missing_folders_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "a" / "b" / "predictions.json"
    write_atomic(path, b"[]")
    assert path.read_bytes() == b"[]"
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.json"]


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    """No space at the rename: the old file is intact, no partial or temporary file is left, and
    the error is one line naming the path and what to do."""
    path = tmp_path / "weights.pt"
    path.write_bytes(b"old")

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"cannot write the weights to .*weights\.pt: .*free some space"):
        write_atomic(path, b"new", "write the weights to")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]


def test_a_durable_write_reaches_the_disk_before_the_rename_and_the_folder_after_it(tmp_path, monkeypatch):
    """replacing(durable=True) (checkpoints): fsync of the data before os.replace, of the folder after."""
    events = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "fsync", lambda fd: events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}")))
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b)))
    path = tmp_path / "last.pt"
    with replacing(path, durable=True) as f:
        f.write(b"state")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)] and path.read_bytes() == b"state"
    events.clear()
    with replacing(path) as f:  # the default: no fsync
        f.write(b"other")
    assert events == [("replace", None)]


def test_check_new_output_refuses_an_existing_file_a_folder_and_the_input(tmp_path):
    old = tmp_path / "old.json"
    old.write_text("{}")
    with pytest.raises(UsageError, match=r"old\.json already exists: .*pass --overwrite"):
        check_new_output(old, overwrite=False)
    assert check_new_output(old, overwrite=True) == old
    with pytest.raises(UsageError, match="is a folder"):
        check_new_output(tmp_path, overwrite=True)
    with pytest.raises(UsageError, match="is also the input"):
        check_new_output(tmp_path / "." / "old.json", overwrite=True, inputs=(old,))
    linked = tmp_path / "linked.json"
    os.link(old, linked)  # a hard link: another name for the input file
    with pytest.raises(UsageError, match="is also the input"):
        check_new_output(linked, overwrite=True, inputs=(old,))
    assert old.read_text() == "{}"
    # a dangling symbolic link was silently replaced by the file (the user's link gone)
    dangling = tmp_path / "preds.json"
    dangling.symlink_to(tmp_path / "gone" / "preds.json")
    with pytest.raises(
        UsageError, match=r"preds\.json already exists \(a symbolic link to .*gone.*missing\)"
    ):
        check_new_output(dangling, overwrite=False)
    assert check_new_output(dangling, overwrite=True) == dangling
    # a dangling link as a folder above the output (hqm export CK dangdir): one line, not mkdir's errno
    (tmp_path / "dangdir").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match=r"dangdir is a symbolic link to .*nowhere, which is missing"):
        check_new_output(tmp_path / "dangdir" / "model.safetensors", overwrite=True)


def test_an_output_under_a_file_is_refused_before_anything_runs(tmp_path):
    """``--save-predictions notes.txt/x.json`` used to fail with a traceback after the whole evaluation."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for out in (notes / "x.json", notes / "sub" / "x.json"):
        with pytest.raises(UsageError, match=r"notes\.txt is a file, not a folder"):
            check_new_output(out, overwrite=True)
        with pytest.raises(OutputError, match=r"cannot write .*notes\.txt"):
            write_atomic(out, b"{}")
    assert notes.read_text() == "mine"


def test_a_path_ending_with_a_slash_is_refused(tmp_path):
    """``--save-predictions notes.txt/ --overwrite`` replaced the file notes.txt (Path drops the slash)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UsageError, match="ends with a slash"):
        check_new_output(f"{notes}/", overwrite=True)
    assert notes.read_text() == "mine"


def test_eval_refuses_to_save_predictions_in_the_data_set(tiny_root, tiny_ckpt, tmp_path, capsys):
    """``hqm eval CKPT data.root=copy --save-predictions copy/annotations/test_hico.json --overwrite``
    replaced the test annotation file the evaluation reads; any path in data.root itself or in its
    image / annotation folders is refused now, --overwrite or not, before the evaluation."""
    import shutil

    from hqm.cli import main

    data = tmp_path / "datacopy"
    shutil.copytree(tiny_root, data)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    for out, where in (
        (data / "annotations" / "test_hico.json", f"the data set's folder {data.resolve() / 'annotations'}"),
        (data / "preds.json", "data.root"),
        (data / "images" / "test2015" / "preds.json", "the data set's folder"),
        (tmp_path / "elsewhere" / ".." / "datacopy" / "annotations" / "p.json", "the data set's folder"),
    ):
        for extra in ([], ["--overwrite"]):
            argv = ["eval", str(tiny_ckpt), f"data.root={data}", "--save-predictions", str(out), *extra]
            assert main(argv) == 2
            err = capsys.readouterr().err
            line = err.strip().splitlines()[-1]
            assert "Traceback" not in err and line.startswith("hqm eval: error: --save-predictions")
            assert f"is inside {where}" in line and "choose a path outside the data set" in line
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    # a folder of the user's own under data.root is not the data set's: written there
    out = data / "mine" / "preds.json"
    assert main(["eval", str(tiny_ckpt), f"data.root={data}", "--save-predictions", str(out)]) == 0
    assert out.is_file()
