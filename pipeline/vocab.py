"""Special tokens, vocabulary files and their fingerprints.

Ids 0-3 are reserved in every vocabulary so padding, unknown pieces, start and end of sentence
mean the same thing to the Beam job, the model and the exported graph.
"""

import hashlib

import tensorflow as tf

PAD = "[PAD]"
UNK = "[UNK]"
BOS = "[BOS]"
EOS = "[EOS]"
RESERVED_TOKENS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(len(RESERVED_TOKENS))

# WordPiece marks a piece that continues a word with this prefix.
SUFFIX_INDICATOR = "##"


class VocabularyError(ValueError):
    """A vocabulary file is missing, malformed or does not match what was expected."""


def load_vocabulary(path: str) -> list[str]:
    """Reads one token per line and checks the reserved ids are where everyone expects them."""
    if not tf.io.gfile.exists(path):
        raise VocabularyError(f"Vocabulary file {path} does not exist.")
    with tf.io.gfile.GFile(path, "r") as f:
        tokens = [line.rstrip("\n") for line in f]
    if tuple(tokens[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
        raise VocabularyError(
            f"Vocabulary {path} must start with {RESERVED_TOKENS}, found {tokens[:4]}."
        )
    if len(set(tokens)) != len(tokens):
        raise VocabularyError(f"Vocabulary {path} has duplicate tokens.")
    return tokens


def write_vocabulary(path: str, tokens: list[str]) -> None:
    """Writes tokens one per line; the reserved tokens must come first."""
    if tuple(tokens[: len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
        raise VocabularyError(f"Refusing to write {path}: reserved tokens must come first.")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(token + "\n" for token in tokens))


def fingerprint(tokens: list[str]) -> str:
    """A content hash that changes whenever any token or its id changes."""
    digest = hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()
    return f"sha256:{digest[:16]}"
