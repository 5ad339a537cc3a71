import json
import os
import shutil

import pytest

from pipeline import metadata, paths


def test_finished_dataset_is_accepted(small_dataset):
    data = metadata.read_metadata(small_dataset)
    metadata.check_compatible(data, small_dataset)
    counts = data["counts"]
    assert counts["read"] == sum(counts["written"].values()) + sum(counts["rejected"].values())


def _copy_dataset(src: paths.DatasetLayout, dst_root) -> paths.DatasetLayout:
    shutil.copytree(src.root, dst_root)
    return paths.DatasetLayout(str(dst_root))


def test_schema_mismatch_is_refused_with_versions_named(small_dataset, tmp_path):
    layout = _copy_dataset(small_dataset, tmp_path / "d")
    data = metadata.read_metadata(layout)
    data["schema_version"] = 99
    with pytest.raises(metadata.DatasetError, match="schema_version 99"):
        metadata.check_compatible(data, layout)


def test_changed_vocabulary_is_refused(small_dataset, tmp_path):
    layout = _copy_dataset(small_dataset, tmp_path / "d")
    shutil.copyfile(layout.vocabulary("source"), layout.vocabulary("target"))
    with pytest.raises(metadata.DatasetError, match="vocabulary changed after preprocessing"):
        metadata.check_compatible(metadata.read_metadata(layout), layout)


def test_unfinished_dataset_is_refused(small_dataset, tmp_path):
    layout = _copy_dataset(small_dataset, tmp_path / "d")
    os.remove(layout.completed)
    with pytest.raises(metadata.DatasetError, match="did not finish"):
        metadata.read_metadata(layout)


def test_missing_metadata_names_the_path(tmp_path):
    layout = paths.DatasetLayout(str(tmp_path))
    with pytest.raises(metadata.DatasetError, match=json.dumps(str(tmp_path))[1:-1]):
        metadata.read_metadata(layout)


def test_corrupt_vocabulary_is_refused_naming_the_file(small_dataset, tmp_path):
    layout = _copy_dataset(small_dataset, tmp_path / "d")
    with open(layout.vocabulary("target"), "wb") as f:
        f.write(b"\xff" * 64)  # an overlong varint: no protobuf parses it
    with pytest.raises(metadata.DatasetError, match="target.model: Not a SentencePiece model"):
        metadata.check_compatible(metadata.read_metadata(layout), layout)


def test_truncated_vocabulary_is_refused_naming_the_file(small_dataset, tmp_path):
    """Half a model may still parse (protobuf stops at a field boundary); then its fingerprint
    no longer matches. Either way the file is named."""
    layout = _copy_dataset(small_dataset, tmp_path / "d")
    os.truncate(layout.vocabulary("target"), os.path.getsize(layout.vocabulary("target")) // 2)
    with pytest.raises(metadata.DatasetError, match="target.model"):
        metadata.check_compatible(metadata.read_metadata(layout), layout)


def test_wordpiece_dataset_of_an_older_version_asks_for_a_rerun(small_dataset, tmp_path):
    layout = _copy_dataset(small_dataset, tmp_path / "d")
    for side in ("source", "target"):
        os.remove(layout.vocabulary(side))
        with open(os.path.join(layout.root, "vocab", f"{side}.txt"), "w") as f:
            f.write("[PAD]\n[UNK]\n[BOS]\n[EOS]\nthe\n")
    with pytest.raises(metadata.DatasetError, match="WordPiece .* rerun nmt-preprocess"):
        metadata.check_compatible(metadata.read_metadata(layout), layout)
