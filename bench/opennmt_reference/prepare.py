"""Data for the OpenNMT-tf reference run: SentencePiece 8k unigram per side, tokenized files.

Runs in the separate OpenNMT-tf venv (see README.md). Reads a TSV of pairs (gzip or plain; the
bundled corpus by default) and writes to WORK/data/ (WORK defaults to ~/.cache/nmt/onmt-work):
train.{en,de} and valid.{en,de} (pieces separated by spaces), {en,de}.model and
{en,de}.vocab (OpenNMT vocabulary: <blank> <s> </s>, then the SentencePiece pieces).
About 1 pair in 35 (by CRC32 of the line) is held out for validation.
"""

import argparse
import gzip
import os
import zlib

import sentencepiece as spm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIDES = ("en", "de")


CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nmt")


def read_pairs(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) == 2 and cols[0].strip() and cols[1].strip():
                yield cols[0].strip(), cols[1].strip(), zlib.crc32(line.encode("utf-8"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=os.path.join(REPO, "data/en-de.libreoffice-help.tsv.gz"))
    parser.add_argument("--work", default=os.path.join(CACHE, "onmt-work"))
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--valid_mod", type=int, default=35, help="0 keeps every pair for train")
    args = parser.parse_args()

    out = os.path.join(args.work, "data")
    os.makedirs(out, exist_ok=True)
    splits = {"train": [], "valid": []}
    for en, de, h in read_pairs(args.input):
        held_out = args.valid_mod and h % args.valid_mod == 0
        splits["valid" if held_out else "train"].append((en, de))

    for i, side in enumerate(SIDES):
        prefix = os.path.join(out, side)
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([pair[i] for pair in splits["train"]]),
            model_prefix=prefix,
            vocab_size=args.vocab_size,
            model_type="unigram",
            num_threads=2,
            minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        with open(prefix + ".vocab", encoding="utf-8") as f:
            pieces = [line.split("\t")[0] for line in f]
        with open(prefix + ".vocab", "w", encoding="utf-8") as f:
            f.write("<blank>\n<s>\n</s>\n")
            f.writelines(p + "\n" for p in pieces if p not in ("<unk>", "<s>", "</s>"))
        for split, pairs in splits.items():
            encoded = sp.encode([pair[i] for pair in pairs], out_type=str)
            with open(os.path.join(out, f"{split}.{side}"), "w", encoding="utf-8") as f:
                f.writelines(" ".join(toks) + "\n" for toks in encoded)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"pairs: {counts}; files in {out}")


if __name__ == "__main__":
    main()
