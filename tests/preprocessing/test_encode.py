"""Tokenization with the shared tokenizer, piece-length filters and the one record format."""

import logging
import re

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline, util

from pipeline import features, text
from pipeline import vocab as vocab_lib
from preprocessing import encode, progress, records, vocabulary

_VOCABULARY = vocabulary.learn_vocabulary(
    vocabulary.count_words(["Open the file.", "Open the file.", "Hello there"]),
    vocabulary.VocabParams(size=40),
)


def _tokenized(source_ids, target_ids, split="train"):
    return records.TokenizedPair(split, source_ids, target_ids, records.Pair("s", "t", "f:1", b"r"))


def test_tokenize_pairs_matches_the_trainers_tokenizer(caplog):
    sentences = ["Open the file.", "Hello there", "zz"]
    tokenizer = text.SubwordTokenizer(_VOCABULARY)
    learned = vocabulary.Learned(_VOCABULARY, seconds=0.1, words=5, distinct_words=5)
    expected_ids = tokenizer.tokenize(tf.constant(sentences)).to_list()
    pairs = [
        (split, records.Pair(s, s, f"f:{i}", b""))
        for i, (split, s) in enumerate(zip(["train", "dev", "test"], sentences, strict=True))
    ]
    caplog.set_level(logging.INFO)
    with test_pipeline.TestPipeline() as p:
        vocabs = p | "Vocabs" >> beam.Create([("source", learned), ("target", learned)])
        tokenized = p | beam.Create(pairs) | encode.TokenizePairs(vocabs, progress_seconds=0)
        util.assert_that(
            tokenized,
            util.equal_to(
                [
                    records.TokenizedPair(split, ids, ids, pair)
                    for (split, pair), ids in zip(pairs, expected_ids, strict=True)
                ]
            ),
        )
    # The tokenizer counts its pairs against the job's number of pairs.
    counts = [r.getMessage() for r in caplog.records if r.name == progress.__name__]
    assert re.fullmatch(
        r"Tokenize progress: worker \d+ has tokenized 3 of 3 pairs of sentence pairs in .*",
        counts[-1],
    )
    pieces = [p.decode() for p in tokenizer.ids_to_pieces(expected_ids[0]).numpy()]
    assert "".join(pieces).replace(text.SPACE_MARK, " ").strip() == "Open the file."
    assert vocab_lib.UNK_ID in expected_ids[2]


@pytest.mark.parametrize(
    "lengths, problem",
    [
        ((3, 3), None),
        ((4, 1), records.BAD_LENGTH_RATIO),
        ((3, 1), None),
        ((5, 6), records.TOO_LONG),
        ((5, 5), None),
    ],
)
def test_length_problem(lengths, problem):
    assert encode.length_problem(*lengths, max_length=5, max_length_ratio=3.0) == problem
    assert encode.length_problem(*lengths, max_length=9, max_length_ratio=0) is None


def test_filter_lengths_rejects_with_origin_and_raw_line():
    kept = _tokenized([1, 2], [3, 4])
    too_long = _tokenized([1] * 9, [2] * 9)
    with test_pipeline.TestPipeline() as p:
        good, rejects = p | beam.Create([kept, too_long]) | encode.FilterLengths(8, 3.0)
        util.assert_that(good, util.equal_to([kept]))
        util.assert_that(
            rejects,
            util.equal_to([records.Reject(records.TOO_LONG, "f:1", b"r")]),
            label="CheckRejects",
        )


def test_encoded_example_parses_with_the_one_feature_spec():
    split, record = encode.encode(_tokenized([5, 6], [7], split="dev"))
    parsed = features.parse_example(tf.constant(record))
    assert split == "dev"
    assert parsed[features.SOURCE_IDS].numpy().tolist() == [5, 6]
    assert parsed[features.TARGET_IDS].numpy().tolist() == [7]
    assert parsed[features.SOURCE_TEXT].numpy() == b"s"
