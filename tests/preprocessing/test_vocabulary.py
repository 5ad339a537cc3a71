"""Vocabularies: words counted by a combiner, learned deterministically, written as the contract."""

import collections
import random

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline, util

from pipeline import paths
from pipeline import vocab as vocab_lib
from preprocessing import records, vocabulary
from tests.preprocessing import conftest

_PARAMS = vocabulary.VocabParams(size=200)


def _pairs(count=40):
    return [
        records.Pair(s, t, f"f:{i}", b"") for i, (s, t) in enumerate(conftest.clean_pairs(count))
    ]


@pytest.mark.parametrize("max_words", [1_000_000, 2])
def test_count_words_per_bundle_sums_to_whitespace_words(max_words):
    sentences = ["Open the file.", "Open (the) window", "the end"]
    expected = collections.Counter(("k", w) for s in sentences for w in s.split())
    with test_pipeline.TestPipeline() as p:
        counts = (
            p
            | beam.Create([("k", s) for s in sentences])
            | beam.ParDo(vocabulary.CountWords(max_words))
            | beam.CombinePerKey(sum)
        )
        util.assert_that(counts, util.equal_to(list(expected.items())))


def test_character_counts_cover_every_word():
    with test_pipeline.TestPipeline() as p:
        characters = (
            p
            | beam.Create([("ab", 2), ("b\u00f8", 1)])
            | beam.CombineGlobally(vocabulary.CharacterCounts())
        )
        util.assert_that(characters, util.equal_to([{"a": 2, "b": 3, "\u00f8": 1}]))


def test_characters_of_words_beyond_the_top_still_get_pieces():
    top = {"house": 50, "tree": 40, "window": 30}
    pieces = vocabulary.learn_vocabulary(top, _PARAMS, {"\u00f8": 1, "h": 50}).pieces
    assert "\u00f8" in pieces
    assert "\u00f8" not in vocabulary.learn_vocabulary(top, _PARAMS).pieces


def test_learning_does_not_depend_on_count_order():
    items = list(vocabulary.count_words(pair.source for pair in _pairs()).items())
    learned = vocabulary.learn_vocabulary(dict(items), _PARAMS)
    random.Random(0).shuffle(items)
    assert vocabulary.learn_vocabulary(dict(items), _PARAMS).model == learned.model
    assert learned.pieces[:4] == vocab_lib.RESERVED_TOKENS
    assert len(learned) <= _PARAMS.size


def test_learning_is_bounded_by_max_words():
    counts = vocabulary.count_words(pair.source for pair in _pairs())
    few = vocabulary.learn_vocabulary(counts, vocabulary.VocabParams(size=200, max_words=3))
    assert "\u2581window" not in few.pieces
    assert "\u2581window" in vocabulary.learn_vocabulary(counts, _PARAMS).pieces


@pytest.mark.parametrize("shared", [False, True])
def test_learn_vocabularies_gives_both_sides(shared):
    params = vocabulary.VocabParams(size=200, shared=shared)

    def check(learned):
        vocabs = {side: each.vocabulary for side, each in learned}
        assert set(vocabs) == {"source", "target"}
        assert ("\u2581Haus" in vocabs["source"].pieces) == shared
        assert "\u2581Haus" in vocabs["target"].pieces
        assert (vocabs["source"] == vocabs["target"]) == shared
        for _, each in learned:
            assert each.words == each.distinct_words > 10
            assert each.seconds > 0

    with test_pipeline.TestPipeline() as p:
        vocabs = p | beam.Create(_pairs()) | vocabulary.LearnVocabularies(params)
        util.assert_that(vocabs, check)


def test_vocab_params_refuse_nonsense():
    with pytest.raises(ValueError, match="reserved"):
        vocabulary.VocabParams(size=4)
    with pytest.raises(ValueError, match="--vocab_max_words"):
        vocabulary.VocabParams(max_words=0)
    with pytest.raises(ValueError, match="--vocab_character_coverage"):
        vocabulary.VocabParams(character_coverage=1.5)


def test_missing_vocabulary_explains_the_empty_training_split():
    with pytest.raises(ValueError, match="training split is empty"):
        vocabulary.check_learned({"source": ["x"]})


def test_write_vocabularies_writes_loadable_files_and_reports_fingerprints(tmp_path):
    layout = paths.DatasetLayout(str(tmp_path))
    model = vocabulary.learn_vocabulary({"open": 3, "the": 2, "file": 1}, _PARAMS)
    learned = vocabulary.Learned(model, seconds=0.25, words=3, distinct_words=5)
    with test_pipeline.TestPipeline() as p:
        info = (
            p
            | beam.Create([("source", learned), ("target", learned)])
            | vocabulary.WriteVocabularies(layout)
        )
        expected = {
            "size": len(model),
            "fingerprint": vocab_lib.fingerprint(model),
            "learn_seconds": 0.25,
            "words_learned_from": 3,
            "distinct_words": 5,
        }
        util.assert_that(info, util.equal_to([("source", expected), ("target", expected)]))
    for side in vocabulary.SIDES:
        assert vocab_lib.load_vocabulary(layout.vocabulary(side)) == model


def test_learn_vocabularies_keeps_the_alphabet_of_words_beyond_the_top():
    params = vocabulary.VocabParams(size=200, max_words=10)
    pairs = [*_pairs(), records.Pair("Close the \u00f8resund panel.", "x", "g:1", b"")]

    def check(learned):
        assert "\u00f8" in dict(learned)["source"].vocabulary.pieces

    with test_pipeline.TestPipeline() as p:
        util.assert_that(p | beam.Create(pairs) | vocabulary.LearnVocabularies(params), check)
