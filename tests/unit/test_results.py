"""workers.results: a job's results reach its output folder whole."""

from __future__ import annotations

from workers.results import discard, publish, staging_path


def fill(folder, files):
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def contents(folder):
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_staging_folder_is_a_hidden_sibling_of_the_output(tmp_path):
    assert staging_path(tmp_path / "out", "j1") == tmp_path / ".out.j1.partial"


def test_a_new_output_is_the_staging_folder_renamed(tmp_path):
    staging = fill(tmp_path / ".out.j.partial", {"a.mhd": "1", "publish/b.png": "2"})
    publish(staging, tmp_path / "out")
    assert contents(tmp_path / "out") == {"a.mhd": "1", "publish/b.png": "2"} and not staging.exists()


def test_an_existing_output_takes_the_new_files_and_keeps_the_others(tmp_path):
    output = fill(tmp_path / "out", {"a.mhd": "old", "notes.txt": "mine", "publish/b.png": "old"})
    staging = fill(tmp_path / ".out.j.partial", {"a.mhd": "new", "publish/b.png": "new", "publish/c.json": "3"})
    publish(staging, output)
    assert contents(output) == {"a.mhd": "new", "notes.txt": "mine", "publish/b.png": "new", "publish/c.json": "3"}
    assert not staging.exists()


def test_publishing_twice_or_discarding_nothing_is_harmless(tmp_path):
    staging = fill(tmp_path / ".out.j.partial", {"a": "1"})
    publish(staging, tmp_path / "out")
    publish(staging, tmp_path / "out")  # an end completed a second time
    discard(tmp_path / ".out.k.partial")
    assert contents(tmp_path / "out") == {"a": "1"}


def test_discard_removes_a_partial_result(tmp_path):
    staging = fill(tmp_path / ".out.j.partial", {"a.raw": "half"})
    discard(staging)
    assert not staging.exists() and not (tmp_path / "out").exists()
