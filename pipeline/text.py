"""Text normalisation and the reversible subword tokenizer shared by Beam, trainer and export.

Tokenization is SentencePiece (TF Text's in-graph `SentencepieceTokenizer`) with a model learned
by the Beam job. The model's own normaliser is the identity: `normalize` (and its in-graph twin)
is the one normalisation, applied before tokenizing, so the model sees exactly the text that is
stored. SentencePiece marks each space as a `SPACE_MARK` prefix of the next piece, so
`detokenize(tokenize(text)) == text` for any normalised text whose characters are in the
vocabulary.
"""

import hashlib
import re
import unicodedata

import tensorflow as tf
import tensorflow_text as tf_text

from pipeline import vocab as vocab_lib

SPACE_MARK = "\u2581"  # LOWER ONE EIGHTH BLOCK, as in SentencePiece.

_CONTROL_CATEGORIES = ("Cc", "Cf", "Co", "Cs")
_WHITESPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """NFC, no control or format characters, single spaces, no space mark (it is reserved)."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or unicodedata.category(ch) not in _CONTROL_CATEGORIES
    )
    text = text.replace(SPACE_MARK, "_")
    return _WHITESPACE.sub(" ", text).strip()


def normalize_in_graph(text: tf.Tensor) -> tf.Tensor:
    """The in-graph twin of `normalize` for raw strings reaching an exported model."""
    text = tf_text.normalize_utf8(text, "NFC")
    # RE2's \s is ASCII-only; this class is what Python's str.isspace() accepts.
    text = tf.strings.regex_replace(text, r"[\s\p{Z}\x{1c}-\x{1f}\x{85}]+", " ")
    text = tf.strings.regex_replace(text, r"[\p{Cc}\p{Cf}\p{Co}\p{Cs}]", "")
    text = tf.strings.regex_replace(text, SPACE_MARK, "_")
    text = tf.strings.regex_replace(text, " +", " ")
    return tf.strings.strip(text)


class SubwordTokenizer(tf.Module):
    """Reversible SentencePiece over one vocabulary; every method runs in graph and in a SavedModel.

    TF Text's `SentencepieceTokenizer` holds the serialised model as a graph resource, so the
    Beam job, the trainer and the exported model tokenize with the same bytes.
    """

    def __init__(self, vocabulary: vocab_lib.Vocabulary, name: str | None = None):
        super().__init__(name=name)
        self.vocab_size = len(vocabulary)
        self._pieces = tf.constant(vocabulary.pieces)
        # A name of its own per model: a SavedModel holding two SentencepieceTokenizers of the
        # same name (TF Text 2.15) reloads with the first one's model for both.
        digest = hashlib.sha256(vocabulary.model).hexdigest()[:16]
        self._sentencepiece = tf_text.SentencepieceTokenizer(
            model=vocabulary.model, out_type=tf.int32, name=f"sentencepiece_{digest}"
        )

    def tokenize(self, text: tf.Tensor) -> tf.RaggedTensor:
        """Normalised strings [batch] -> ragged int32 ids [batch, (pieces)]."""
        return self._sentencepiece.tokenize(text)

    def detokenize(self, ids: tf.RaggedTensor) -> tf.Tensor:
        """Ragged ids [batch, (pieces)] without specials -> strings [batch]."""
        # The tokenizer op wants int64 row splits; ragged ops on parsed records give int32.
        return self._sentencepiece.detokenize(ids.with_row_splits_dtype(tf.int64))

    def ids_to_pieces(self, ids: tf.Tensor) -> tf.Tensor:
        """Ids -> their piece strings, for attention pictures and debugging."""
        return tf.gather(self._pieces, ids)
