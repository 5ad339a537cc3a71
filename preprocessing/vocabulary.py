"""The subword vocabulary: words counted by a Beam combiner, WordPiece learned from the counts.

Counting is the part that grows with the corpus, so it is a `CombineFn` the runner lifts into
per-worker partial counts. Learning is one call of TF Text's WordPiece learner per vocabulary; the
two sides are keys of one grouped stage, so separate source and target vocabularies are learned on
two workers at once.

The learner's cost is dominated by its first pass (every substring of every input word) repeated
for each step of its binary search over the count threshold. Bounding the input to the most
frequent words, the piece length and the refinement passes keeps learning to a few seconds per side
on the bundled corpus (German: 27k distinct words, 8.4 s instead of 79 s with the library
defaults) for about 6% more pieces per sentence.
"""

import collections
import dataclasses
import logging
import os
import time

import apache_beam as beam
import tensorflow as tf
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

from pipeline import paths, text
from pipeline import vocab as vocab_lib

SIDES = ("source", "target")
_SHARED = "shared"
# Longer words are left out of learning (their pieces come from shorter words); each extra
# character lengthens the learner's first pass over every word.
MAX_PIECE_CHARS = 16


@dataclasses.dataclass(frozen=True)
class VocabParams:
    """How the vocabularies are learned.

    Attributes:
      size: Largest vocabulary, reserved tokens included; the learner stops near or below it.
      shared: Learn one vocabulary from both sides and use it for both.
      min_count: Fewest occurrences of a piece in the training split to be kept.
      iterations: Learner refinement passes.
      max_words: Most frequent distinct words the learner sees (0: same as `size`).
    """

    size: int = 8000
    shared: bool = False
    min_count: int = 10
    iterations: int = 3
    max_words: int = 0

    def __post_init__(self):
        if self.size <= len(vocab_lib.RESERVED_TOKENS):
            raise ValueError(
                f"--vocab_size={self.size} leaves no room beside the "
                f"{len(vocab_lib.RESERVED_TOKENS)} reserved tokens."
            )
        for name in ("min_count", "iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"--vocab_{name} must be at least 1, got {getattr(self, name)}.")


class CountWords(beam.CombineFn):
    """Texts -> {word: count}, words as `pipeline.text.split_words` cuts them.

    `split_words` cuts each space-separated chunk on its own, so the accumulator counts chunks
    (a cheap `str.split`) and `split_words` runs once per distinct chunk at the end: the same
    counts, for about a quarter of the cost.
    """

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, chunks, sentence):
        chunks.update(sentence.replace(" ", " " + text.SPACE_MARK).split())
        return chunks

    def merge_accumulators(self, accumulators):
        merged, *others = accumulators
        for chunks in others:
            merged.update(chunks)
        return merged

    def extract_output(self, chunks):
        words = collections.Counter()
        for chunk, count in chunks.items():
            for word in text.split_words(chunk):
                words[word] += count
        return dict(words)


def learn_vocabulary(word_counts: dict[str, int], params: VocabParams) -> list[str]:
    """WordPiece tokens learned from (non-empty) word counts, reserved tokens first."""
    # The learner keeps the first `max_input_tokens` words of a stable sort by count, so ties
    # are ordered here; otherwise the vocabulary would depend on the order combiners merged in.
    ordered = sorted(word_counts.items(), key=lambda word_count: (-word_count[1], word_count[0]))
    return learner.learn(
        ordered,
        vocab_size=params.size,
        reserved_tokens=list(vocab_lib.RESERVED_TOKENS),
        lower_thresh=params.min_count,
        num_iterations=params.iterations,
        max_input_tokens=params.max_words or params.size,
        max_token_length=MAX_PIECE_CHARS,
    )


def check_learned(vocabularies: dict) -> None:
    """Fails the job with a clear message when no vocabulary was learned.

    Raises:
      ValueError: the training split was empty, so there was nothing to learn from.
    """
    missing = [side for side in SIDES if side not in vocabularies]
    if missing:
        raise ValueError(
            f"No {' or '.join(missing)} vocabulary was learned because the training split is "
            "empty: check the input, the rejects file and the --max_* and --*_fraction flags."
        )


def _texts_by_vocabulary(pair, shared: bool):
    if shared:
        return [(_SHARED, pair.source), (_SHARED, pair.target)]
    return [("source", pair.source), ("target", pair.target)]


def _learn(key_and_counts, params: VocabParams):
    key, counts = key_and_counts
    start = time.time()
    tokens = learn_vocabulary(counts, params)
    logging.info(
        "Learned the %s vocabulary: %d pieces from %d distinct words in %.1f s.",
        key,
        len(tokens),
        len(counts),
        time.time() - start,
    )
    sides = SIDES if key == _SHARED else (key,)
    return [(side, tokens) for side in sides]


class LearnVocabularies(beam.PTransform):
    """Training `Pair`s -> (side, tokens) for 'source' and 'target'.

    Feed it the training split only: a vocabulary that saw dev or test text would leak it.
    """

    def __init__(self, params: VocabParams):
        super().__init__()
        self._params = params

    def expand(self, train_pairs):
        return (
            train_pairs
            | "TextsByVocabulary" >> beam.FlatMap(_texts_by_vocabulary, self._params.shared)
            | "CountWords" >> beam.CombinePerKey(CountWords())
            | "Learn" >> beam.FlatMap(_learn, self._params)
        )


def _write(side_and_tokens, layout: paths.DatasetLayout):
    side, tokens = side_and_tokens
    path = layout.vocabulary(side)
    tf.io.gfile.makedirs(os.path.dirname(path))
    vocab_lib.write_vocabulary(path, tokens)
    return side, {"size": len(tokens), "fingerprint": vocab_lib.fingerprint(tokens)}


class WriteVocabularies(beam.PTransform):
    """(side, tokens) -> files in the layout; outputs (side, {'size', 'fingerprint'})."""

    def __init__(self, layout: paths.DatasetLayout):
        super().__init__()
        self._layout = layout

    def expand(self, vocabularies):
        return vocabularies | "Write" >> beam.Map(_write, self._layout)
