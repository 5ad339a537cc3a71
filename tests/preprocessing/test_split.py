"""Split assignment: stable, by source, with the asked-for fractions."""

import collections

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline, util

from preprocessing import records, split


def test_hash_is_stable_across_processes_and_versions():
    # A fixed value: Python's salted hash() or a library change would break reruns' splits.
    assert split.hash_fraction("Click OK.") == pytest.approx(0.2693598, abs=1e-7)


def test_fractions_are_respected_and_changing_one_leaves_the_other_split_alone():
    sources = [f"sentence {i}" for i in range(20000)]
    before = {s: split.assign_split(s, 0.05, 0.05) for s in sources}
    counts = collections.Counter(before.values())
    assert counts[split.DEV] == pytest.approx(1000, rel=0.1)
    assert counts[split.TEST] == pytest.approx(1000, rel=0.1)
    after = {s: split.assign_split(s, 0.10, 0.05) for s in sources}
    assert {s for s, v in before.items() if v == split.TEST} == {
        s for s, v in after.items() if v == split.TEST
    }
    assert all(after[s] == split.DEV for s, v in before.items() if v == split.DEV)


@pytest.mark.parametrize("dev, test", [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5)])
def test_bad_fractions_are_refused(dev, test):
    with pytest.raises(ValueError, match="fraction"):
        split.check_fractions(dev, test)


def test_assign_splits_keeps_pairs_with_one_source_together():
    pairs = [records.Pair("same source", t, f"f:{i}", b"") for i, t in enumerate("abcdef")]
    pairs += [records.Pair(f"other {i}", "x", f"g:{i}", b"") for i in range(50)]
    with test_pipeline.TestPipeline() as p:
        names = (
            p
            | beam.Create(pairs)
            | split.AssignSplits(dev_fraction=0.3, test_fraction=0.3)
            | beam.Filter(lambda kv: kv[1].source == "same source")
            | beam.Keys()
            | beam.Distinct()
        )
        util.assert_that(names, util.equal_to([split.assign_split("same source", 0.3, 0.3)]))


def test_assign_splits_keeps_the_split_an_input_gave():
    pairs = [records.Pair(f"sentence {i}", "x", f"f:{i}", b"", "test") for i in range(20)]
    pairs.append(records.Pair("no split", "x", "g:1", b""))
    with test_pipeline.TestPipeline() as p:
        names = p | beam.Create(pairs) | split.AssignSplits(0.0, 0.0)
        util.assert_that(
            names | beam.Map(lambda kv: (kv[0], kv[1].source == "no split")),
            util.equal_to([("test", False)] * 20 + [("train", True)]),
        )
