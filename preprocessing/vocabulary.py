"""The subword vocabulary: words counted by Beam, a SentencePiece BPE model learned from them.

Counting is the part that grows with the corpus, so no worker ever holds every word: each bundle
counts its own words (`CountWords`), the counts are summed keyed by (vocabulary, word) and so
spread over the workers, and only what learning needs is reduced by combiners to one place per
vocabulary: the K most frequent words (`Top.PerKey`), the character inventory of all words
(`CharacterCounts`) and the number of distinct words. Learning is one call of SentencePiece's BPE
trainer per vocabulary; the two sides are keys of one grouped stage, so separate source and
target vocabularies are learned on two workers at once.

The trainer is fed word counts, not sentences. SentencePiece cuts its training sentences at
spaces and learns from the resulting table of distinct words and their frequencies, so the
job's word counts (whitespace-separated words, `count_words`) are that same table, but built by
Beam across all workers from the whole training split instead of by one process from a sample of
sentences. Learning time then depends on the number of distinct words the trainer sees, capped
by `--vocab_max_words`: BPE learned 8000 pieces from 250k distinct words in 2.5 s and from 1M in
12 s (synthetic Zipfian counts, on a busy machine), where TF Text's WordPiece learner took
50-190 s for the 8000 most frequent words of the bundled corpus (bench/preprocess_vocab.py).
Words beyond the cap are the rarest ones; their characters still get pieces, from the character
inventory of all words.
"""

import collections
import dataclasses
import io
import logging
import os
import time

import apache_beam as beam
import sentencepiece
import tensorflow as tf
from apache_beam.transforms import window

from pipeline import paths
from pipeline import vocab as vocab_lib

SIDES = ("source", "target")
_SHARED = "shared"
_TOP, _CHARACTERS, _DISTINCT = "top", "characters", "distinct"
# Characters that get a piece whatever their share of the top words, most frequent first; rarer
# ones are [UNK].
MAX_ALPHABET = 1000
# Longest piece in characters (SentencePiece's default).
MAX_PIECE_CHARS = 16
MODEL_TYPES = ("bpe", "unigram")


@dataclasses.dataclass(frozen=True)
class VocabParams:
    """How the vocabularies are learned.

    Attributes:
      size: Vocabulary size, reserved tokens included; fewer when the corpus has fewer pieces.
      shared: Learn one vocabulary from both sides and use it for both.
      max_words: Most frequent distinct words the learner sees; bounds its time and memory.
      character_coverage: Share of the top words' characters that get a piece (the rarest of
        the rest are [UNK]); below 1 only for alphabets of thousands of characters.
      model_type: SentencePiece's 'bpe' (fast to learn: seconds at WMT scale) or 'unigram'
        (4-6x slower to learn and slightly more pieces per sentence on the bundled corpus).
    """

    size: int = 8000
    shared: bool = False
    max_words: int = 1_000_000
    character_coverage: float = 1.0
    model_type: str = "bpe"

    def __post_init__(self):
        if self.size <= len(vocab_lib.RESERVED_TOKENS):
            raise ValueError(
                f"--vocab_size={self.size} leaves no room beside the "
                f"{len(vocab_lib.RESERVED_TOKENS)} reserved tokens."
            )
        if self.max_words < 1:
            raise ValueError(f"--vocab_max_words must be at least 1, got {self.max_words}.")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"--vocab_model_type must be one of {', '.join(MODEL_TYPES)}, got "
                f"{self.model_type!r}."
            )
        if not 0 < self.character_coverage <= 1:
            raise ValueError(
                f"--vocab_character_coverage must be in (0, 1], got {self.character_coverage}."
            )


@dataclasses.dataclass(frozen=True)
class Learned:
    """One learned vocabulary and how learning went (recorded in metadata.json).

    Attributes:
      vocabulary: The model.
      seconds: Learning time (the trainer call alone).
      words: Distinct words the trainer saw (at most `VocabParams.max_words`).
      distinct_words: Distinct words of the training split.
    """

    vocabulary: vocab_lib.Vocabulary
    seconds: float
    words: int
    distinct_words: int


def _chunks(sentence: str) -> list[str]:
    return sentence.split()


def count_words(sentences) -> collections.Counter:
    """{word: count} of `sentences`, words as SentencePiece's trainer cuts them (at spaces)."""
    counts = collections.Counter()
    for sentence in sentences:
        counts.update(_chunks(sentence))
    return counts


class CountWords(beam.DoFn):
    """(vocabulary key, text) -> ((key, word), count) for this bundle's words.

    A bundle emits early once it holds `max_words` distinct words, so its memory is bounded
    whatever the runner's bundle size.
    """

    def __init__(self, max_words: int = 1_000_000):
        self._max_words = max_words
        self._counts = None

    def start_bundle(self):
        self._counts = collections.defaultdict(collections.Counter)

    def process(self, key_and_text):
        key, sentence = key_and_text
        counts = self._counts[key]
        counts.update(_chunks(sentence))
        if len(counts) > self._max_words:
            yield from self._emit()

    def finish_bundle(self):
        for key_word_count in self._emit():
            yield window.GlobalWindows.windowed_value(key_word_count)

    def _emit(self):
        for key, counts in self._counts.items():
            for word, count in counts.items():
                yield (key, word), count
        self._counts.clear()


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


def _required_characters(characters: dict[str, int], size: int) -> str:
    # Ties are ordered by character, so the model does not depend on the order counts merged in.
    ordered = sorted(characters.items(), key=lambda item: (-item[1], item[0]))
    # At most half the vocabulary, so a small one still has room for longer pieces.
    return "".join(character for character, _ in ordered[: min(MAX_ALPHABET, size // 2)])


def learn_vocabulary(
    word_counts: dict[str, int], params: VocabParams, characters: dict[str, int] | None = None
) -> vocab_lib.Vocabulary:
    """A SentencePiece model learned from (non-empty) word counts, reserved tokens first.

    The trainer sees the `params.max_words` most frequent words with their counts; the
    `MAX_ALPHABET` most frequent characters of all words get pieces whatever the trainer saw,
    so the alphabet of rarer words stays in the vocabulary (not [UNK]).

    Args:
      word_counts: All words' counts, or at least the most frequent `params.max_words`; words
        contain no whitespace.
      params: How to learn.
      characters: Character counts of all words (computed from `word_counts` if None).
    """
    if characters is None:
        characters = CharacterCounts().add_inputs(collections.Counter(), word_counts.items())
    # Ties are ordered by word, so the model does not depend on the order counts merged in.
    ordered = sorted(word_counts.items(), key=lambda word_count: (-word_count[1], word_count[0]))
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        # One "sentence" per word with its count: the table the trainer would build from text.
        sentence_iterator=iter(f"{word}\t{count}" for word, count in ordered[: params.max_words]),
        input_format="tsv",
        model_writer=model,
        model_type=params.model_type,
        vocab_size=params.size,
        # The corpus may have fewer pieces than asked for (small corpora, tests).
        hard_vocab_limit=False,
        character_coverage=params.character_coverage,
        required_chars=_required_characters(characters, params.size),
        max_sentencepiece_length=MAX_PIECE_CHARS,
        # `pipeline.text.normalize` is the one normalisation; the model must not add another.
        normalization_rule_name="identity",
        pad_id=vocab_lib.PAD_ID,
        unk_id=vocab_lib.UNK_ID,
        bos_id=vocab_lib.BOS_ID,
        eos_id=vocab_lib.EOS_ID,
        pad_piece=vocab_lib.PAD,
        unk_piece=vocab_lib.UNK,
        bos_piece=vocab_lib.BOS,
        eos_piece=vocab_lib.EOS,
        # Recorded in the model, so fixed: the same counts give the same bytes on any machine.
        num_threads=1,
        minloglevel=2,
    )
    return vocab_lib.from_model(model.getvalue(), "The learned vocabulary")


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
    vocabulary = learn_vocabulary({word: count for count, word in top}, params, characters)
    learned = Learned(vocabulary, time.time() - start, len(top), distinct)
    logging.info(
        "Learned the %s vocabulary: %d pieces from the %d most frequent of %d distinct words "
        "and %d characters in %.1f s.",
        key,
        len(vocabulary),
        learned.words,
        distinct,
        len(characters),
        learned.seconds,
    )
    sides = SIDES if key == _SHARED else (key,)
    return [(side, learned) for side in sides]


def _by_key(key_word_and_count):
    (key, word), count = key_word_and_count
    return key, (count, word)


def _word_and_count(key_word_and_count):
    (key, word), count = key_word_and_count
    return key, (word, count)


def _key(key_word_and_count):
    return key_word_and_count[0][0]


class LearnVocabularies(beam.PTransform):
    """Training `Pair`s -> (side, `Learned`) for 'source' and 'target'.

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
        inputs = {
            _TOP: word_counts
            | "ByVocabulary" >> beam.Map(_by_key)
            | "TopWords" >> beam.combiners.Top.PerKey(self._params.max_words),
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


def _write(side_and_learned, layout: paths.DatasetLayout):
    side, learned = side_and_learned
    path = layout.vocabulary(side)
    tf.io.gfile.makedirs(os.path.dirname(path))
    vocab_lib.write_vocabulary(path, learned.vocabulary)
    return side, {
        "size": len(learned.vocabulary),
        "fingerprint": vocab_lib.fingerprint(learned.vocabulary),
        "learn_seconds": round(learned.seconds, 3),
        "words_learned_from": learned.words,
        "distinct_words": learned.distinct_words,
    }


class WriteVocabularies(beam.PTransform):
    """(side, `Learned`) -> files in the layout; outputs (side, {'size', 'fingerprint', ...}).

    The info also says how learning went: 'learn_seconds', 'words_learned_from' and
    'distinct_words'.
    """

    def __init__(self, layout: paths.DatasetLayout):
        super().__init__()
        self._layout = layout

    def expand(self, vocabularies):
        return vocabularies | "Write" >> beam.Map(_write, self._layout)
