"""The subword vocabulary: words counted by Beam, WordPiece learned from the most frequent.

Counting is the part that grows with the corpus, so no worker ever holds every word: each bundle
counts its own words (`CountWords`), the counts are summed keyed by (vocabulary, word) and so
spread over the workers, and only what learning needs is reduced by combiners to one place per
vocabulary: the K most frequent words (`Top.PerKey`), the character inventory of all words
(`CharacterCounts`) and the number of distinct words. Learning is one call of TF Text's
WordPiece learner per vocabulary, on the top words plus every character; the two sides are keys
of one grouped stage, so separate source and target vocabularies are learned on two workers at
once.

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
from apache_beam.transforms import window
from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

from pipeline import paths, text
from pipeline import vocab as vocab_lib

SIDES = ("source", "target")
_SHARED = "shared"
_TOP, _CHARACTERS, _DISTINCT = "top", "characters", "distinct"
# Characters kept as pieces, most frequent first (the learner's default); rarer ones are [UNK].
MAX_ALPHABET = 1000
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


def _chunks(sentence: str) -> list[str]:
    return sentence.replace(" ", " " + text.SPACE_MARK).split()


def _words_of_chunks(chunk_counts: collections.Counter, key=None) -> collections.Counter:
    words = collections.Counter()
    for chunk, count in chunk_counts.items():
        for word in text.split_words(chunk):
            words[word if key is None else (key, word)] += count
    return words


def count_words(sentences) -> collections.Counter:
    """{word: count} of `sentences`, words as `pipeline.text.split_words` cuts them."""
    chunk_counts = collections.Counter()
    for sentence in sentences:
        chunk_counts.update(_chunks(sentence))
    return _words_of_chunks(chunk_counts)


class CountWords(beam.DoFn):
    """(vocabulary key, text) -> ((key, word), count) for this bundle's words.

    Words are as `pipeline.text.split_words` cuts them. It cuts each space-separated chunk on its
    own, so a bundle counts chunks (a cheap `str.split`) and splits each distinct chunk once when
    it emits: the same counts, for about a quarter of the cost. A bundle emits early once it holds
    `max_chunks` distinct chunks, so its memory is bounded whatever the runner's bundle size.
    """

    def __init__(self, max_chunks: int = 1_000_000):
        self._max_chunks = max_chunks
        self._chunks = None

    def start_bundle(self):
        self._chunks = collections.defaultdict(collections.Counter)

    def process(self, key_and_text):
        key, sentence = key_and_text
        chunk_counts = self._chunks[key]
        chunk_counts.update(_chunks(sentence))
        if len(chunk_counts) > self._max_chunks:
            yield from self._emit()

    def finish_bundle(self):
        for key_word_count in self._emit():
            yield window.GlobalWindows.windowed_value(key_word_count)

    def _emit(self):
        words = collections.Counter()
        for key, chunk_counts in self._chunks.items():
            words.update(_words_of_chunks(chunk_counts, key))
        self._chunks.clear()
        yield from words.items()


class CharacterCounts(beam.CombineFn):
    """(word, count) -> {character: occurrences}: the whole alphabet, small at any corpus size."""

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, characters, word_and_count):
        word, count = word_and_count
        for character in word:
            characters[character] += count
        return characters

    def merge_accumulators(self, accumulators):
        merged, *others = accumulators
        for characters in others:
            merged.update(characters)
        return merged

    def extract_output(self, characters):
        return dict(characters)


def learn_vocabulary(
    word_counts: dict[str, int], params: VocabParams, characters: dict[str, int] | None = None
) -> list[str]:
    """WordPiece tokens learned from (non-empty) word counts, reserved tokens first.

    The learner sees the `params.max_words` most frequent words and, as one-letter words, every
    character of all words, so the alphabet of rarer words stays in the vocabulary (not [UNK]).

    Args:
      word_counts: All words' counts, or at least the most frequent `params.max_words`.
      params: How to learn.
      characters: Character counts of all words (computed from `word_counts` if None).
    """
    if characters is None:
        characters = collections.Counter()
        for word, count in word_counts.items():
            for character in word:
                characters[character] += count
    # Ties are ordered by word, so the vocabulary does not depend on the order counts merged in.
    ordered = sorted(word_counts.items(), key=lambda word_count: (-word_count[1], word_count[0]))
    words = dict(ordered[: params.max_words or params.size])
    # Capped at the top word's count: the learner binary-searches a count threshold up to the
    # largest count it sees, and a character's total would widen that search (and its passes).
    ceiling = max(words.values(), default=1)
    for character, count in characters.items():
        words[character] = max(words.get(character, 0), min(count, ceiling))
    return learner.learn(
        sorted(words.items(), key=lambda word_count: (-word_count[1], word_count[0])),
        vocab_size=params.size,
        reserved_tokens=list(vocab_lib.RESERVED_TOKENS),
        lower_thresh=params.min_count,
        num_iterations=params.iterations,
        max_input_tokens=-1,
        max_token_length=MAX_PIECE_CHARS,
        max_unique_chars=MAX_ALPHABET,
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


def _learn(key_and_inputs, params: VocabParams):
    key, inputs = key_and_inputs
    (top,), (characters,), (distinct,) = inputs[_TOP], inputs[_CHARACTERS], inputs[_DISTINCT]
    start = time.time()
    tokens = learn_vocabulary({word: count for count, word in top}, params, characters)
    logging.info(
        "Learned the %s vocabulary: %d pieces from the %d most frequent of %d distinct words "
        "and %d characters in %.1f s.",
        key,
        len(tokens),
        len(top),
        distinct,
        len(characters),
        time.time() - start,
    )
    sides = SIDES if key == _SHARED else (key,)
    return [(side, tokens) for side in sides]


def _by_key(key_word_and_count):
    (key, word), count = key_word_and_count
    return key, (count, word)


def _word_and_count(key_word_and_count):
    (key, word), count = key_word_and_count
    return key, (word, count)


def _key(key_word_and_count):
    return key_word_and_count[0][0]


class LearnVocabularies(beam.PTransform):
    """Training `Pair`s -> (side, tokens) for 'source' and 'target'.

    Feed it the training split only: a vocabulary that saw dev or test text would leak it.
    """

    def __init__(self, params: VocabParams):
        super().__init__()
        self._params = params

    def expand(self, train_pairs):
        word_counts = (
            train_pairs
            | "TextsByVocabulary" >> beam.FlatMap(_texts_by_vocabulary, self._params.shared)
            | "CountWords" >> beam.ParDo(CountWords())
            | "SumWordCounts" >> beam.CombinePerKey(sum)
        )
        top_words = self._params.max_words or self._params.size
        inputs = {
            _TOP: word_counts
            | "ByVocabulary" >> beam.Map(_by_key)
            | "TopWords" >> beam.combiners.Top.PerKey(top_words),
            _CHARACTERS: word_counts
            | "WordAndCount" >> beam.Map(_word_and_count)
            | "Characters" >> beam.CombinePerKey(CharacterCounts()),
            _DISTINCT: word_counts
            | "Vocabulary" >> beam.Map(_key)
            | "DistinctWords" >> beam.combiners.Count.PerElement(),
        }
        return (
            inputs
            | "Together" >> beam.CoGroupByKey()
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
