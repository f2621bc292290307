"""Writes that a reader sees whole or not at all (:mod:`promptmoe_plugin.atomic`)."""

import threading
from pathlib import Path

import pytest

from promptmoe_plugin.atomic import private_name, replaced_atomically


def test_a_finished_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "tasks.json"
    target.write_text("old")
    with replaced_atomically(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tasks.json.")
        tmp.write_text("new")
        assert target.read_text() == "old"  # not before the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_part(tmp_path: Path) -> None:
    target = tmp_path / "tasks.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), replaced_atomically(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks.json"]


def test_a_folder_replaces_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "graph"
    target.mkdir()
    (target / "stale.onnx").write_text("old")
    with replaced_atomically(target) as tmp:
        tmp.mkdir()
        (tmp / "model.onnx").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["model.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph"]


def test_threads_of_one_process_get_their_own_temporary_names(tmp_path: Path) -> None:
    names: list[Path] = []
    together = threading.Barrier(4)  # all alive at once: a finished thread's id is reused

    def name() -> None:
        names.append(private_name(tmp_path / "k.npy"))
        together.wait()

    threads = [threading.Thread(target=name) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 4
