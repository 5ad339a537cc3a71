"""Fixtures of the preprocessing tests: a deliberately dirty corpus and a real local TFDS set."""

import gzip
import os

import pytest
import tensorflow_datasets as tfds
from etils import epath

from preprocessing import records, split

_NOUNS = ["house", "tree", "window", "table", "cell", "sheet", "page", "file"]
_GERMAN = ["Haus", "Baum", "Fenster", "Tabelle", "Zelle", "Blatt", "Seite", "Datei"]


def clean_pairs(count: int) -> list[tuple[str, str]]:
    """Distinct, well-formed pairs that share enough words to learn a small vocabulary from."""
    return [
        (
            f"Open the {_NOUNS[i % 8]} number {i} now.",
            f"Öffnen Sie {_GERMAN[i % 8]} Nummer {i} jetzt.",
        )
        for i in range(count)
    ]


# Flags that make each reject reason reachable with a small corpus.
FLAGS = [
    "--max_chars=200",
    "--max_length=24",
    "--max_length_ratio=3",
    "--dev_fraction=0.2",
    "--test_fraction=0.2",
    "--vocab_size=300",
    "--vocab_min_count=1",
]

# Raw TSV lines (bytes, no newline) and the reason each is rejected for under FLAGS.
DIRTY_LINES = [
    (b"only one field", records.WRONG_FIELD_COUNT),
    (b"one\ttwo\tthree", records.WRONG_FIELD_COUNT),
    (b"", records.WRONG_FIELD_COUNT),
    (b"caf\xe9 au lait\tMilchkaffee", records.INVALID_UTF8),
    (b"x" * 201 + b"\tzu lang", records.TOO_MANY_CHARS),
    (b"Hello\t \x07\x1b ", records.EMPTY_SIDE),
    (
        "Open  the house number 0\u00a0now.\tÖffnen Sie Haus Nummer 0 jetzt.".encode(),
        records.DUPLICATE,
    ),
    (" ".join(["word"] * 30).encode() + b"\t" + " ".join(["Wort"] * 30).encode(), records.TOO_LONG),
    (b"yes\t" + b" ".join([b"ja"] * 15), records.BAD_LENGTH_RATIO),
]


def leak_probe_pairs(dev_fraction=0.2, test_fraction=0.2) -> list[tuple[str, str]]:
    """Pairs whose source holds "ø" and that land in dev or test: a vocabulary learned from the
    training split alone cannot contain that character."""
    candidates = (f"Close the \u00f8 panel {i}." for i in range(1000))
    held_out = [
        source
        for source in candidates
        if split.assign_split(source, dev_fraction, test_fraction) != split.TRAIN
    ]
    return [(source, f"Schließen Sie Bereich {i}.") for i, source in enumerate(held_out[:3])]


@pytest.fixture(scope="session")
def dirty_corpus(tmp_path_factory):
    """A gzip TSV (clean pairs with dirty lines between) and two aligned files one line apart.

    Returns:
      dict with 'tsv', 'source', 'target' paths, 'lines' (records in all inputs) and
      'expected' ({origin: reason} of every line that must be rejected).
    """
    tmp_path = tmp_path_factory.mktemp("dirty_corpus")
    pairs = clean_pairs(40)
    lines = [f"{s}\t{t}".encode() for s, t in pairs[:30] + leak_probe_pairs()]
    lines[3] = lines[3] + b"\r"  # A CRLF line end is not part of the text.
    lines[5] = "Cafe\u0301 open.\tCafe\u0301 offen.".encode()  # Decomposed: normalised to NFC.
    expected = {}
    tsv_lines = []
    for index, line in enumerate(lines):
        tsv_lines.append(line)
        if index < len(DIRTY_LINES):
            tsv_lines.append(DIRTY_LINES[index][0])
            expected[len(tsv_lines)] = DIRTY_LINES[index][1]
    tsv = tmp_path / "dirty.tsv.gz"
    with gzip.open(tsv, "wb") as f:
        f.write(b"".join(line + b"\n" for line in tsv_lines))
    tsv_path = str(tsv)
    expected = {f"{tsv_path}:{n}": reason for n, reason in expected.items()}

    source, target = tmp_path / "aligned.en", tmp_path / "aligned.de"
    extra = pairs[30:]
    source.write_text("".join(s + "\n" for s, _ in extra) + "unpaired one\nunpaired two\n")
    target.write_text("".join(t + "\n" for _, t in extra))
    for n in (len(extra) + 1, len(extra) + 2):
        expected[f"{source}:{n}"] = records.LINE_COUNT_MISMATCH
    return {
        "tsv": tsv_path,
        "source": str(source),
        "target": str(target),
        "lines": len(tsv_lines) + len(extra) + 2,
        "expected": expected,
    }


class PreprocessingTestTranslate(tfds.core.GeneratorBasedBuilder):
    """A three-split English-German set built from TSV files in the manual directory."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS 4.9.10 finds a builder's source through `importlib_resources`, which it declares only
    # for Python < 3.9 (so it is not installed); naming this file directly skips that lookup.
    code_path = epath.Path(__file__)
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put train.tsv, validation.tsv and test.tsv in the manual dir."

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.Translation(languages=("en", "de")),
            supervised_keys=("en", "de"),
        )

    def _split_generators(self, dl_manager):
        return {
            split: self._generate_examples(os.path.join(dl_manager.manual_dir, f"{split}.tsv"))
            for split in TFDS_SPLITS
        }

    def _generate_examples(self, path):
        with open(path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                english, german = line.rstrip("\n").split("\t")
                yield index, {"en": english, "de": german}


TFDS_NAME = "preprocessing_test_translate"


def tfds_split_pairs() -> dict[str, list[tuple[str, str]]]:
    """The set's pairs by split: validation and test each repeat a training pair, as real sets
    can; the repeats come first in name order ("test" < "train" < "validation") only once."""
    pairs = clean_pairs(46)
    return {
        "train": pairs[:30],
        "validation": [pairs[1], *pairs[30:40]],
        "test": [pairs[0], *pairs[40:]],
    }


TFDS_SPLITS = tuple(tfds_split_pairs())


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
    """A prepared TFDS data_dir holding `TFDS_NAME` (30 train, 11 validation, 7 test pairs)."""
    manual = tmp_path_factory.mktemp("tfds_manual")
    for name, chunk in tfds_split_pairs().items():
        (manual / f"{name}.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in chunk))
    data_dir = str(tmp_path_factory.mktemp("tfds_data"))
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    return data_dir
