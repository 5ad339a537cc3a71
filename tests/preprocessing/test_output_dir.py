"""Output directory: refuse to clobber, stage beside it, swap into place, clean up failures."""

import os

import pytest

from pipeline import paths
from preprocessing import output_dir


def _complete(root):
    os.makedirs(root)
    open(os.path.join(root, paths.COMPLETED), "w").close()


def test_existing_complete_output_is_refused_with_advice(tmp_path):
    root = str(tmp_path / "out")
    _complete(root)
    with pytest.raises(output_dir.OutputExistsError, match="complete dataset.*--overwrite"):
        output_dir.prepare(root, overwrite=False)


def test_existing_unfinished_output_is_refused_too(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (root / "stray").write_text("x")
    with pytest.raises(output_dir.OutputExistsError, match="no COMPLETED marker"):
        output_dir.prepare(str(root), overwrite=False)


def test_staging_is_a_sibling_and_commit_replaces_old_output(tmp_path):
    root = str(tmp_path / "out")
    _complete(root)
    staging = output_dir.prepare(root, overwrite=True)
    assert os.path.dirname(staging) == str(tmp_path) and staging != root
    assert os.path.exists(os.path.join(root, paths.COMPLETED))  # Old output untouched so far.
    open(os.path.join(staging, "new"), "w").close()
    output_dir.commit(staging, root)
    assert os.listdir(root) == ["new"]
    assert os.listdir(tmp_path) == ["out"]


def test_empty_existing_directory_is_used_and_abandon_keeps_it(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    staging = output_dir.prepare(str(root), overwrite=False)
    output_dir.abandon(staging, str(root))
    assert sorted(os.listdir(tmp_path)) == ["out"]
