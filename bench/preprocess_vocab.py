"""Vocabulary learners compared on one corpus: learning time, pieces per sentence, too-long share.

Candidates, learned from the same word counts of one side of a TSV corpus (normalised as the job
normalises it) at the same target size, and tokenized as the job tokenizes
(`pipeline.text.SubwordTokenizer`):
  sentencepiece-bpe      the job's learner (`preprocessing.vocabulary.learn_vocabulary`) with
                         its defaults: SentencePiece BPE from word counts;
  sentencepiece-unigram  the same with `--vocab_model_type=unigram`.
Reported: learning time, mean pieces per sentence, share of sentences over --max_length pieces
(the job's `too_long` reject), and share of [UNK] pieces.

The WordPiece learner the job used before (TF Text's, on the K most frequent words) is measured by
this script at commit 546a6c8, whose candidates were wordpiece-top8000/32000 and SentencePiece
(default normaliser): `git worktree add /tmp/nmt-546a6c8 546a6c8`, then run the same command
there with PYTHONPATH=/tmp/nmt-546a6c8.

  .venv/bin/python bench/preprocess_vocab.py                       # bundled corpus, both sides
  .venv/bin/python bench/preprocess_vocab.py --input /tmp/nmt-scale/corpus-350000.tsv --side source
"""

import argparse
import gzip
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def _sentences(path: str, side: int, limit: int) -> list[str]:
    from pipeline import text

    opener = gzip.open if path.endswith(".gz") else open
    sentences = []
    with opener(path, "rb") as f:
        for line in f:
            fields = line.rstrip(b"\r\n").split(b"\t")
            if len(fields) == 2:
                sentence = text.normalize(fields[side].decode("utf-8", "replace"))
                if sentence:
                    sentences.append(sentence)
            if len(sentences) == limit:
                break
    return sentences


def _learn_and_tokenize(sentences, size, model_type, max_words):
    import tensorflow as tf

    from pipeline import text
    from pipeline import vocab as vocab_lib
    from preprocessing import vocabulary

    params = vocabulary.VocabParams(size=size, max_words=max_words, model_type=model_type)
    counts = vocabulary.count_words(sentences)
    started = time.time()
    learned = vocabulary.learn_vocabulary(counts, params)
    seconds = time.time() - started
    tokenizer = text.SubwordTokenizer(learned)
    lengths, unknown = [], 0
    for begin in range(0, len(sentences), 4096):
        ids = tokenizer.tokenize(tf.constant(sentences[begin : begin + 4096]))
        lengths += ids.row_lengths().numpy().tolist()
        unknown += int(tf.reduce_sum(tf.cast(ids.flat_values == vocab_lib.UNK_ID, tf.int32)))
    return seconds, len(learned), lengths, unknown


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=common.BUNDLED_CORPUS)
    parser.add_argument("--side", choices=("source", "target", "both"), default="both")
    parser.add_argument("--limit", type=int, default=0, help="First N usable lines (0: all).")
    parser.add_argument("--size", type=int, default=8000, help="Target vocabulary size.")
    parser.add_argument("--model_types", default="bpe,unigram", help="SentencePiece models.")
    parser.add_argument("--max_words", type=int, default=1_000_000, help="--vocab_max_words.")
    parser.add_argument("--max_length", type=int, default=64)
    args = parser.parse_args(argv)
    sides = ("source", "target") if args.side == "both" else (args.side,)
    rows = []
    for side in sides:
        sentences = _sentences(args.input, ("source", "target").index(side), args.limit or -1)
        for model_type in args.model_types.split(","):
            result = _learn_and_tokenize(sentences, args.size, model_type, args.max_words)
            seconds, size, lengths, unknown = result
            rows.append(
                {
                    "side": side,
                    "learner": f"sentencepiece-{model_type}",
                    "sentences": len(lengths),
                    "vocab": size,
                    "learn_seconds": round(seconds, 1),
                    "pieces_per_sentence": round(sum(lengths) / len(lengths), 2),
                    "too_long_pct": round(
                        100 * sum(n > args.max_length for n in lengths) / len(lengths), 2
                    ),
                    "unk_per_10k_pieces": round(1e4 * unknown / sum(lengths), 2),
                }
            )
            common.print_table(rows, list(rows[0]))
    path = common.write_json("preprocess_vocab", {"input": args.input, "results": rows})
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
