"""A large synthetic parallel corpus for scale benchmarks, made locally (no download).

Shaped like a WMT news corpus where it matters to preprocessing: word frequencies follow a
Zipf-Mandelbrot law over two million word types a side (100k pairs show about 80k distinct
words a side, 2M pairs about 550k; WMT14 en-de has about a million in 4.5M pairs), sentence
lengths are log-normal around 22 words with a long tail, frequent words are short and rare ones
long, sentences have capitals, commas, numbers and final punctuation, and about 1% of pairs
repeat earlier ones. The "translation" maps each source word type to its own target type, with
inflected endings, extra articles and local reordering, so target sentences differ in length and
word order.

`--dirty_fraction` replaces that share of lines with the faults real corpora have (a missing or
extra tab, bytes that are not UTF-8, an empty side, control characters only, a very long line,
a CRLF ending), so the job's rejects and its accounting can be checked at scale.

  python bench/make_corpus.py /tmp/corpus-2m.tsv 2000000 [--types 2000000] [--seed 1]
  python bench/make_corpus.py /tmp/dirty-200k.tsv.gz 200000 --dirty_fraction 0.02
"""

import argparse
import gzip
import random
import time

import numpy as np

_CONSONANTS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "w", "z"]
_CONSONANTS += ["br", "st", "tr", "sch", "kl", "pf", "sp", "gr", "ch", "fl"]
_VOWELS = ["a", "e", "i", "o", "u", "ei", "au", "ie", "ä", "ü"]
# Consonants then vowels, and a coda only at the end: a word splits into syllables one way, so
# distinct syllable sequences are distinct words.
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]
_CODAS = ["", "n", "r", "s", "t"]
# First rank with 1, 2, 3, ... syllables: a few dozen one-syllable words carry much of the text.
_SYLLABLE_BANDS = (0, 40, 4_000, 400_000)
_ENDINGS = ["", "", "e", "en", "er", "es"]
_ARTICLES = ["der", "die", "das", "den", "dem", "ein", "eine"]
_DIRTY_KINDS = ("no_tab", "extra_tab", "not_utf8", "empty_side", "controls", "long", "crlf")


def _word(rank: int, salt: int) -> str:
    """The word of a frequency rank: distinct for distinct ranks, longer for rarer words."""
    syllables = sum(rank >= start for start in _SYLLABLE_BANDS)
    codes = len(_SYLLABLES) ** syllables * len(_CODAS)
    # A multiplier coprime with `codes` permutes the band, so neighbouring ranks look unrelated.
    code = ((rank - _SYLLABLE_BANDS[syllables - 1]) * 7919 + salt) % codes
    code, coda = divmod(code, len(_CODAS))
    parts = []
    for _ in range(syllables):
        code, syllable = divmod(code, len(_SYLLABLES))
        parts.append(_SYLLABLES[syllable])
    return "".join(parts) + _CODAS[coda]


class _Lexicon(dict):
    """rank -> word, made on first use (most of a large vocabulary is never drawn)."""

    def __init__(self, salt: int):
        super().__init__()
        self._salt = salt

    def __missing__(self, rank: int) -> str:
        word = self[rank] = _word(rank, self._salt)
        return word


class CorpusGenerator:
    """Deterministic pairs for one seed; see the module docstring for their shape."""

    def __init__(self, types: int, seed: int, exponent: float = 1.45, offset: float = 12.0):
        # Zipf-Mandelbrot weights 1 / (rank + offset) ** exponent: with these defaults 100k
        # pairs hold about 80k distinct words a side, 2M pairs about 550k, 4.5M about 900k.
        weights = 1.0 / (np.arange(types) + 1 + offset) ** exponent
        self._cumulative = np.cumsum(weights) / weights.sum()
        self._source_words = _Lexicon(salt=seed)
        self._target_words = _Lexicon(salt=seed + 1_000_003)
        self._np = np.random.default_rng(seed)
        self._rng = random.Random(seed)
        self._recent: list[str] = []

    def _lengths(self, count: int) -> np.ndarray:
        return np.clip(self._np.lognormal(3.0, 0.55, count).astype(int), 1, 150)

    def _sentence_pair(self, ids: list[int]) -> str:
        rng = self._rng
        source = [self._source_words[i] for i in ids]
        target = [self._target_words[i] + rng.choice(_ENDINGS) for i in ids]
        for position in range(0, len(target) - 1, 3):  # Local reordering.
            if rng.random() < 0.4:
                target[position], target[position + 1] = target[position + 1], target[position]
        if len(target) > 4 and rng.random() < 0.5:  # Extra function words on one side.
            target.insert(rng.randrange(len(target)), rng.choice(_ARTICLES))
        if rng.random() < 0.1:
            number = str(rng.randrange(1, 10_000))
            source.insert(rng.randrange(len(source) + 1), number)
            target.insert(rng.randrange(len(target) + 1), number)
        if len(source) > 8 and rng.random() < 0.5:
            cut = rng.randrange(3, len(source) - 3)
            source[cut] += ","
            target[min(cut, len(target) - 2)] += ","
        mark = rng.choice(".......?!")
        return " ".join(source).capitalize() + mark + "\t" + " ".join(target).capitalize() + mark

    def pairs(self, count: int, chunk: int = 10_000):
        """Yields `count` lines `source<TAB>target` (no newline)."""
        for begin in range(0, count, chunk):
            lengths = self._lengths(min(chunk, count - begin))
            ids = np.searchsorted(self._cumulative, self._np.random(lengths.sum())).tolist()
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            for index in range(len(lengths)):
                if self._recent and self._rng.random() < 0.01:
                    yield self._rng.choice(self._recent)
                    continue
                line = self._sentence_pair(ids[offsets[index] : offsets[index + 1]])
                if len(self._recent) < 10_000:
                    self._recent.append(line)
                yield line


def make_dirty(line: str, kind: str) -> bytes:
    """`line` with one kind of fault real corpora have."""
    source, target = line.split("\t")
    faults = {
        "no_tab": source.encode(),
        "extra_tab": f"{source}\t{target}\t{target}".encode(),
        "not_utf8": source.encode() + b"\xff\xfe\t" + target.encode(),
        "empty_side": f"{source}\t ".encode(),
        "controls": f"\x07\x1b\t{target}".encode(),
        "long": f"{source} {' '.join([source] * 40)}\t{target}".encode(),
        "crlf": f"{source}\t{target}\r".encode(),
    }
    return faults[kind]


def write_corpus(path: str, count: int, types: int, seed: int, dirty_fraction: float) -> None:
    generator = CorpusGenerator(types, seed)
    rng = random.Random(seed + 1)
    opener = gzip.open if path.endswith(".gz") else open
    started = time.time()
    with opener(path, "wb") as f:
        for number, line in enumerate(generator.pairs(count), start=1):
            if dirty_fraction and rng.random() < dirty_fraction:
                f.write(make_dirty(line, rng.choice(_DIRTY_KINDS)) + b"\n")
            else:
                f.write(line.encode() + b"\n")
            if number % 500_000 == 0:
                print(f"  {number:,} pairs, {time.time() - started:.0f} s", flush=True)
    print(f"Wrote {count:,} pairs to {path} in {time.time() - started:.0f} s.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="TSV path (.gz compresses).")
    parser.add_argument("pairs", type=int, help="Number of lines.")
    parser.add_argument("--types", type=int, default=2_000_000, help="Word types per side.")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dirty_fraction", type=float, default=0.0, help="Share of bad lines.")
    args = parser.parse_args(argv)
    write_corpus(args.output, args.pairs, args.types, args.seed, args.dirty_fraction)


if __name__ == "__main__":
    main()
