"""Text normalisation and the reversible subword tokenizer shared by Beam, trainer and export.

Tokenization is WordPiece (TF Text's `FastWordpieceTokenizer`), made reversible by marking every
space as a `SPACE_MARK` prefix on the following word before tokenizing. Detokenizing joins the
pieces, drops the separators WordPiece inserts, and turns marks back into spaces, so
`detokenize(tokenize(text)) == text` for any normalised text whose pieces are in the vocabulary.
Beam counts words with `split_words`, which mirrors the tokenizer's own pre-tokenization.
"""

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


def _is_punctuation(ch: str) -> bool:
    """The pre-tokenizer's punctuation test (BERT's): ASCII symbols and Unicode P* categories."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def split_words(text: str) -> list[str]:
    """Splits normalised text into the words WordPiece sees, space marks included."""
    words = []
    for chunk in text.replace(" ", " " + SPACE_MARK).split():
        current = []
        for ch in chunk:
            if _is_punctuation(ch):
                if current:
                    words.append("".join(current))
                    current = []
                words.append(ch)
            else:
                current.append(ch)
        if current:
            words.append("".join(current))
    return words


class SubwordTokenizer(tf.Module):
    """Reversible WordPiece over one vocabulary; every method runs in graph and in a SavedModel."""

    def __init__(self, tokens: list[str], name: str | None = None):
        super().__init__(name=name)
        self.vocab_size = len(tokens)
        self._tokens = tf.constant(tokens)
        self._wordpiece = tf_text.FastWordpieceTokenizer(
            vocab=tokens,
            suffix_indicator=vocab_lib.SUFFIX_INDICATOR,
            unknown_token=vocab_lib.UNK,
            support_detokenization=True,
            token_out_type=tf.int32,
        )

    def tokenize(self, text: tf.Tensor) -> tf.RaggedTensor:
        """Normalised strings [batch] -> ragged int32 ids [batch, (pieces)]."""
        marked = tf.strings.regex_replace(text, " ", " " + SPACE_MARK)
        return self._wordpiece.tokenize(marked)

    def detokenize(self, ids: tf.RaggedTensor) -> tf.Tensor:
        """Ragged ids [batch, (pieces)] without specials -> strings [batch]."""
        # The tokenizer op wants int64 row splits; ragged ops on parsed records give int32.
        joined = self._wordpiece.detokenize(ids.with_row_splits_dtype(tf.int64))
        return tf.strings.regex_replace(tf.strings.regex_replace(joined, " ", ""), SPACE_MARK, " ")

    def ids_to_pieces(self, ids: tf.Tensor) -> tf.Tensor:
        """Ids -> their piece strings, for attention pictures and debugging."""
        return tf.gather(self._tokens, ids)
