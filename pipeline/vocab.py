"""Special tokens, the subword vocabulary as a file, and its fingerprint.

A vocabulary is a SentencePiece model: the serialised `ModelProto` that the Beam job learns and
that `pipeline.text.SubwordTokenizer` (TF Text's in-graph SentencePiece) tokenizes with. Its
bytes are the contract between the job, the trainer and the exported model; the fingerprint is
their hash, so any change to a piece, a score or the normaliser settings changes it.

Ids 0-3 are reserved in every vocabulary so padding, unknown pieces, start and end of sentence
mean the same thing to the Beam job, the model and the exported graph.
"""

import dataclasses
import hashlib
import os

import tensorflow as tf
import tensorflow_text as tf_text

PAD = "[PAD]"
UNK = "[UNK]"
BOS = "[BOS]"
EOS = "[EOS]"
RESERVED_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(RESERVED_TOKENS))


class VocabularyError(ValueError):
    """A vocabulary file is missing, malformed or does not match what was expected."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """One learned subword vocabulary.

    Attributes:
      model: The serialised SentencePiece `ModelProto`: what tokenizes, and what is saved.
      pieces: The pieces in id order, read from `model` (for sizes, listings and debugging).
    """

    model: bytes
    pieces: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.pieces)


def pieces_of(model: bytes) -> tuple[str, ...]:
    """The pieces of a serialised SentencePiece model in id order, read by TF Text.

    Raises:
      VocabularyError: `model` is not a SentencePiece model.
    """
    try:
        tokenizer = tf_text.SentencepieceTokenizer(model=model)
        pieces = tokenizer.id_to_string(tf.range(tokenizer.vocab_size())).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.InternalError) as e:
        # The op's own message is a source location of the C++ parser, not for people.
        raise VocabularyError("Not a SentencePiece model: its bytes do not parse.") from e
    return tuple(piece.decode("utf-8") for piece in pieces)


def from_model(model: bytes, where: str = "the vocabulary") -> Vocabulary:
    """Wraps a serialised SentencePiece model, checking the reserved ids.

    Args:
      model: The serialised `ModelProto`.
      where: What to call it in errors (a path).

    Raises:
      VocabularyError: `model` is not a SentencePiece model, or its first ids are not
        `RESERVED_TOKENS`.
    """
    try:
        pieces = pieces_of(model)
    except VocabularyError as e:
        raise VocabularyError(f"{where}: {e}") from e
    if pieces[: len(RESERVED_TOKENS)] != RESERVED_TOKENS:
        raise VocabularyError(
            f"{where} must start with {RESERVED_TOKENS}, found {pieces[: len(RESERVED_TOKENS)]}."
        )
    return Vocabulary(model, pieces)


def load_vocabulary(path: str) -> Vocabulary:
    """Reads a vocabulary the Beam job wrote (`pipeline.paths.DatasetLayout.vocabulary`).

    Raises:
      VocabularyError: the file is missing (naming the older WordPiece file if that is what is
        there) or is not a SentencePiece model with the reserved ids first.
    """
    if not tf.io.gfile.exists(path):
        old = os.path.splitext(path)[0] + ".txt"
        hint = (
            f" {old} is a WordPiece vocabulary of an older version of the preprocess job; rerun "
            "nmt-preprocess to rebuild the dataset."
            if tf.io.gfile.exists(old)
            else ""
        )
        raise VocabularyError(f"Vocabulary file {path} does not exist.{hint}")
    with tf.io.gfile.GFile(path, "rb") as f:
        return from_model(f.read(), path)


def write_vocabulary(path: str, vocabulary: Vocabulary) -> None:
    """Writes the model to `path`, and its pieces one per line in id order beside it (`.vocab`).

    The listing is for people (the model is binary); nothing reads it back.
    """
    if vocabulary.pieces[: len(RESERVED_TOKENS)] != RESERVED_TOKENS:
        raise VocabularyError(f"Refusing to write {path}: reserved tokens must come first.")
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(vocabulary.model)
    with tf.io.gfile.GFile(listing_path(path), "w") as f:
        f.write("".join(piece + "\n" for piece in vocabulary.pieces))


def listing_path(path: str) -> str:
    """Where `write_vocabulary` puts the readable listing of the model at `path`."""
    return os.path.splitext(path)[0] + ".vocab"


def fingerprint(vocabulary: Vocabulary) -> str:
    """A content hash of the model: changes whenever any piece, score, id or setting does."""
    return f"sha256:{hashlib.sha256(vocabulary.model).hexdigest()[:16]}"
