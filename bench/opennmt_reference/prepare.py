"""Data for the OpenNMT-tf reference run: SentencePiece per side, tokenized files, vocabularies.

Runs in the separate OpenNMT-tf venv (see README.md). Reads a TSV of pairs (gzip or plain; the
bundled corpus by default) and writes to --output_dir (default WORK/data/, WORK defaulting to
~/.cache/nmt/onmt-work): train.{en,de} and valid.{en,de} (pieces separated by spaces),
{en,de}.model and {en,de}.vocab (OpenNMT vocabulary: <blank> <s> </s>, then the model's pieces
in id order without its control and unknown pieces; OpenNMT-tf appends <unk> itself).
The SentencePiece models are learned here (unigram 8k per side, the speed reference's set-up), or
taken as given with --source_sentencepiece/--target_sentencepiece: `bench/decode.py` passes its
dataset's, so both systems read and write the same pieces. About 1 pair in 35 (by CRC32 of the
line) is held out for validation.
"""

import argparse
import gzip
import os
import shutil
import zlib

import sentencepiece as spm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIDES = ("en", "de")
# OpenNMT-tf's padding, start and end tokens: ids 0-2 of each vocabulary file, in this order.
OPENNMT_SPECIAL_TOKENS = ("<blank>", "<s>", "</s>")


CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "nmt")


def read_pairs(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) == 2 and cols[0].strip() and cols[1].strip():
                yield cols[0].strip(), cols[1].strip(), zlib.crc32(line.encode("utf-8"))


def learn_sentencepiece(sentences: list[str], prefix: str, vocab_size: int) -> None:
    """A unigram model at PREFIX.model, learned with SentencePiece's defaults."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        num_threads=2,
        minloglevel=2,
    )


def write_opennmt_vocabulary(sp: spm.SentencePieceProcessor, path: str) -> None:
    """OpenNMT-tf's special tokens, then every piece the model can output, in id order.

    SentencePiece's own control pieces (padding, BOS, EOS) and its unknown piece never occur in
    tokenized text; OpenNMT-tf maps anything not in the file to its own <unk>, appended last.
    """
    pieces = [
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token in (*OPENNMT_SPECIAL_TOKENS, *pieces))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=os.path.join(REPO, "data/en-de.libreoffice-help.tsv.gz"))
    parser.add_argument("--work", default=os.path.join(CACHE, "onmt-work"))
    parser.add_argument("--output_dir", help="Where the files go (default: WORK/data).")
    parser.add_argument("--vocab_size", type=int, default=8000, help="Of learned models.")
    parser.add_argument("--valid_mod", type=int, default=35, help="0 keeps every pair for train")
    parser.add_argument("--source_sentencepiece", help="Use this .model for 'en' (no learning).")
    parser.add_argument("--target_sentencepiece", help="Use this .model for 'de' (no learning).")
    args = parser.parse_args()
    given = (args.source_sentencepiece, args.target_sentencepiece)
    if any(given) and not all(given):
        parser.error("--source_sentencepiece and --target_sentencepiece go together.")

    out = args.output_dir or os.path.join(args.work, "data")
    os.makedirs(out, exist_ok=True)
    splits = {"train": [], "valid": []}
    for en, de, h in read_pairs(args.input):
        held_out = args.valid_mod and h % args.valid_mod == 0
        splits["valid" if held_out else "train"].append((en, de))

    for i, side in enumerate(SIDES):
        prefix = os.path.join(out, side)
        if given[i]:
            shutil.copyfile(given[i], prefix + ".model")
        else:
            learn_sentencepiece([pair[i] for pair in splits["train"]], prefix, args.vocab_size)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        write_opennmt_vocabulary(sp, prefix + ".vocab")
        for split, pairs in splits.items():
            encoded = sp.encode([pair[i] for pair in pairs], out_type=str)
            with open(os.path.join(out, f"{split}.{side}"), "w", encoding="utf-8") as f:
                f.writelines(" ".join(toks) + "\n" for toks in encoded)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"pairs: {counts}; files in {out}")


if __name__ == "__main__":
    main()
