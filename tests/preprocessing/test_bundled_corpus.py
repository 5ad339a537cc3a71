"""The job on the bundled corpus with default flags, as the main job runs it."""

import gzip
import os

import pytest

from pipeline import metadata as metadata_lib
from pipeline import paths
from preprocessing import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, "data", "en-de.libreoffice-help.tsv.gz")


@pytest.mark.slow
def test_bundled_corpus_with_defaults(tmp_path):
    output_dir = str(tmp_path / "en-de")
    main.run([f"--input={CORPUS}", f"--output_dir={output_dir}"])
    layout = paths.DatasetLayout(output_dir)
    metadata = metadata_lib.read_metadata(layout)
    metadata_lib.check_compatible(metadata, layout)
    counts = metadata["counts"]
    with gzip.open(CORPUS, "rb") as f:
        assert counts["read"] == sum(1 for _ in f)
    assert counts["read"] == sum(counts["written"].values()) + sum(counts["rejected"].values())
    written = counts["written"]
    # About 3% of distinct sources each (~1k pairs), the rest for training.
    assert 800 <= written["dev"] <= 1300 and 800 <= written["test"] <= 1300
    assert written["train"] > 0.85 * counts["read"]
    for side in ("source", "target"):
        assert 3000 <= metadata["vocab"][side]["size"] <= 8000
        assert metadata["vocab_learn_seconds"][side] > 0
        assert 5 < metadata["vocab"][side]["pieces_per_sentence"] < 64
    assert max(int(n) for n in metadata["length_histograms"]["target"]) <= 64
