"""Train/dev/test assignment: the input's own split if it has one, else a stable hash.

Inputs with their own splits (a TFDS set's train/validation/test, mapped by `--tfds_splits`)
keep them, so published dev and test sets stay what they are. Every other pair is assigned by a
stable hash of its normalised source sentence.

Hashing the source (not the pair, not a random draw) keeps every pair that shares a source in one
split, so a sentence with two translations cannot be in train and test at once. The hash is
SHA-256 of the text alone, so a rerun, another runner or a grown corpus gives every existing pair
the split it had before. Test takes the bottom of the hash range and dev the top, so changing one
fraction never moves pairs in or out of the other split.
"""

import hashlib

import apache_beam as beam

from pipeline import paths
from preprocessing import records

TRAIN, DEV, TEST = paths.SPLITS


def hash_fraction(source: str) -> float:
    """Maps text to [0, 1) uniformly and reproducibly (unlike Python's salted `hash`)."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(source: str, dev_fraction: float, test_fraction: float) -> str:
    """The split of a pair whose normalised source is `source`."""
    position = hash_fraction(source)
    if position < test_fraction:
        return TEST
    if position >= 1.0 - dev_fraction:
        return DEV
    return TRAIN


def check_fractions(dev_fraction: float, test_fraction: float) -> None:
    """Raises ValueError unless both fractions are in [0, 1) and leave room for training."""
    for name, value in (("--dev_fraction", dev_fraction), ("--test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if dev_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"--dev_fraction + --test_fraction = {dev_fraction + test_fraction} leaves nothing "
            "to train on; their sum must be below 1."
        )


class AssignSplits(beam.PTransform):
    """`Pair`s -> (split name, `Pair`): `Pair.split`, or by hash where that is empty."""

    def __init__(self, dev_fraction: float, test_fraction: float):
        super().__init__()
        check_fractions(dev_fraction, test_fraction)
        self._dev_fraction = dev_fraction
        self._test_fraction = test_fraction

    def expand(self, pairs):
        return pairs | "Assign" >> beam.Map(self._keyed, self._dev_fraction, self._test_fraction)

    @staticmethod
    def _keyed(pair: records.Pair, dev_fraction, test_fraction):
        return pair.split or assign_split(pair.source, dev_fraction, test_fraction), pair
