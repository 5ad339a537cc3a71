"""Vocabularies: words counted by a combiner, learned deterministically, written as the contract."""

import collections
import random

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline, util

from pipeline import paths, text
from pipeline import vocab as vocab_lib
from preprocessing import records, vocabulary
from tests.preprocessing import conftest

_PARAMS = vocabulary.VocabParams(size=200, min_count=1)


def _pairs(count=40):
    return [
        records.Pair(s, t, f"f:{i}", b"") for i, (s, t) in enumerate(conftest.clean_pairs(count))
    ]


@pytest.mark.parametrize("max_chunks", [1_000_000, 2])
def test_count_words_per_bundle_sums_to_split_words(max_chunks):
    sentences = ["Open the file.", "Open (the) window", "the end"]
    expected = collections.Counter(("k", w) for s in sentences for w in text.split_words(s))
    with test_pipeline.TestPipeline() as p:
        counts = (
            p
            | beam.Create([("k", s) for s in sentences])
            | beam.ParDo(vocabulary.CountWords(max_chunks))
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
    tokens = vocabulary.learn_vocabulary(top, _PARAMS, {"\u00f8": 1, "h": 50})
    assert "\u00f8" in tokens and "##\u00f8" in tokens
    assert "\u00f8" not in vocabulary.learn_vocabulary(top, _PARAMS)


def test_learning_does_not_depend_on_count_order():
    counts = collections.Counter()
    for pair in _pairs():
        counts.update(text.split_words(pair.source))
    items = list(counts.items())
    tokens = vocabulary.learn_vocabulary(dict(items), _PARAMS)
    random.Random(0).shuffle(items)
    assert vocabulary.learn_vocabulary(dict(items), _PARAMS) == tokens
    assert tuple(tokens[:4]) == vocab_lib.RESERVED_TOKENS
    assert len(tokens) <= _PARAMS.size


@pytest.mark.parametrize("shared", [False, True])
def test_learn_vocabularies_gives_both_sides(shared):
    params = vocabulary.VocabParams(size=200, min_count=1, shared=shared)

    def check(vocabs):
        vocabs = dict(vocabs)
        assert set(vocabs) == {"source", "target"}
        assert ("\u2581Haus" in vocabs["source"]) == shared
        assert "\u2581Haus" in vocabs["target"]
        assert (vocabs["source"] == vocabs["target"]) == shared

    with test_pipeline.TestPipeline() as p:
        vocabs = p | beam.Create(_pairs()) | vocabulary.LearnVocabularies(params)
        util.assert_that(vocabs, check)


def test_vocab_params_refuse_nonsense():
    with pytest.raises(ValueError, match="reserved"):
        vocabulary.VocabParams(size=4)
    with pytest.raises(ValueError, match="--vocab_min_count"):
        vocabulary.VocabParams(min_count=0)


def test_missing_vocabulary_explains_the_empty_training_split():
    with pytest.raises(ValueError, match="training split is empty"):
        vocabulary.check_learned({"source": ["x"]})


def test_write_vocabularies_writes_loadable_files_and_reports_fingerprints(tmp_path):
    layout = paths.DatasetLayout(str(tmp_path))
    tokens = [*vocab_lib.RESERVED_TOKENS, "a", "##a"]
    with test_pipeline.TestPipeline() as p:
        info = (
            p
            | beam.Create([("source", tokens), ("target", tokens)])
            | vocabulary.WriteVocabularies(layout)
        )
        expected = {"size": 6, "fingerprint": vocab_lib.fingerprint(tokens)}
        util.assert_that(info, util.equal_to([("source", expected), ("target", expected)]))
    for side in vocabulary.SIDES:
        assert vocab_lib.load_vocabulary(layout.vocabulary(side)) == tokens


def test_learn_vocabularies_keeps_the_alphabet_of_words_beyond_the_top():
    params = vocabulary.VocabParams(size=200, min_count=1, max_words=10)
    pairs = [*_pairs(), records.Pair("Close the \u00f8resund panel.", "x", "g:1", b"")]

    def check(vocabs):
        assert "##\u00f8" in dict(vocabs)["source"]

    with test_pipeline.TestPipeline() as p:
        util.assert_that(p | beam.Create(pairs) | vocabulary.LearnVocabularies(params), check)
