"""metadata.json content and the input fingerprint."""

import apache_beam as beam
from apache_beam.testing import test_pipeline, util

from pipeline import features
from preprocessing import records, summary


def test_input_fingerprint_ignores_order_but_not_content():
    lines = [records.Line(f"f:{i}", f"line {i}".encode(), ()) for i in range(20)]

    def fingerprint(values, label):
        return values | label >> beam.CombineGlobally(summary.InputFingerprint())

    with test_pipeline.TestPipeline() as p:
        forward = fingerprint(p | "A" >> beam.Create(lines), "FA")
        backward = fingerprint(p | "B" >> beam.Create(lines[::-1]), "FB")
        changed = fingerprint(p | "C" >> beam.Create(lines[1:]), "FC")
        both = (forward, backward, changed) | beam.Flatten() | beam.Distinct()
        util.assert_that(both | beam.combiners.Count.Globally(), util.equal_to([2]))


def test_build_metadata_fills_every_split_and_reason():
    metadata = summary.build_metadata(
        by_input={"x": {"read": 5, "written": 3, "rejected": 2}},
        written={"train": 3},
        rejected={records.DUPLICATE: 2},
        vocabularies={"source": {"size": 9}, "target": {"size": 8}},
        histogram=[(("source", 2), 3), (("target", 10), 1), (("target", 2), 2)],
        files=[("train", "a"), ("train", "b"), ("dev", "c"), ("test", "d"), ("rejects", "e")],
        settings={"shared_vocab": False, "max_length": 64, "input_paths": ["x"]}
        | {"beam_options": {"runner": "DirectRunner"}, "flags": {}},
        input_fingerprint="fp",
        elapsed_seconds=1.23,
    )
    assert metadata["schema_version"] == features.SCHEMA_VERSION
    assert metadata["counts"]["read"] == 5
    assert metadata["counts"]["by_input"] == {"x": {"read": 5, "written": 3, "rejected": 2}}
    assert metadata["counts"]["written"] == {"train": 3, "dev": 0, "test": 0}
    assert set(metadata["counts"]["rejected"]) == set(records.REJECT_REASONS)
    assert metadata["length_histograms"] == {"source": {"2": 3}, "target": {"10": 1, "2": 2}}
    assert metadata["num_shards"] == {"train": 2, "dev": 1, "test": 1}
    assert metadata["vocab"]["shared"] is False
    assert metadata["input"] == {"paths": ["x"], "fingerprint": "fp"}
