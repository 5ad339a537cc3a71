"""Vocabulary learners compared on one corpus: learning time, pieces per sentence, too-long share.

Candidates, all learned from the same word counts of one side of a TSV corpus (normalised as the
job normalises it) at the same target size:
  wordpiece-topK   TF Text's WordPiece learner on the K most frequent words plus every character
                   (the job's learner; K=8000 is today's default), tokenized by FastWordpiece
                   exactly as the job tokenizes;
  sentencepiece-*  SentencePiece unigram and BPE trained from the word counts (`input_format=tsv`,
                   the same data a Beam combiner would hand it), needs `pip install
                   sentencepiece`.
Reported: learning time, mean pieces per sentence, share of sentences over --max_length pieces
(the job's `too_long` reject), and share of [UNK] pieces.

  .venv/bin/python bench/preprocess_vocab.py                       # bundled corpus, both sides
  .venv/bin/python bench/preprocess_vocab.py --input /tmp/nmt-scale/corpus-350000.tsv --side source
"""

import argparse
import gzip
import os
import sys
import tempfile
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


def _wordpiece(sentences, size, top_words, max_length):
    import tensorflow as tf

    from pipeline import text
    from pipeline import vocab as vocab_lib
    from preprocessing import vocabulary

    params = vocabulary.VocabParams(size=size, max_words=top_words)
    started = time.time()
    tokens = vocabulary.learn_vocabulary(vocabulary.count_words(sentences), params)
    seconds = time.time() - started
    tokenizer = text.SubwordTokenizer(tokens)
    lengths, unknown = [], 0
    for begin in range(0, len(sentences), 4096):
        ids = tokenizer.tokenize(tf.constant(sentences[begin : begin + 4096]))
        lengths += ids.row_lengths().numpy().tolist()
        unknown += int(tf.reduce_sum(tf.cast(ids.flat_values == vocab_lib.UNK_ID, tf.int32)))
    return seconds, len(tokens), lengths, unknown


def _sentencepiece(sentences, size, model_type, work_dir):
    import collections

    import sentencepiece as spm

    counts = collections.Counter(word for s in sentences for word in s.split())
    tsv = os.path.join(work_dir, "words.tsv")
    with open(tsv, "w", encoding="utf-8") as f:
        f.writelines(f"{word}\t{count}\n" for word, count in counts.items())
    prefix = os.path.join(work_dir, model_type)
    started = time.time()
    spm.SentencePieceTrainer.train(
        input=tsv,
        input_format="tsv",
        model_prefix=prefix,
        vocab_size=size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        pad_piece="[PAD]",
        unk_piece="[UNK]",
        bos_piece="[BOS]",
        eos_piece="[EOS]",
        num_threads=os.cpu_count(),
        minloglevel=2,
    )
    seconds = time.time() - started
    model = spm.SentencePieceProcessor(model_file=prefix + ".model")
    encoded = model.encode(sentences)
    lengths = [len(ids) for ids in encoded]
    unknown = sum(ids.count(1) for ids in encoded)
    return seconds, model.get_piece_size(), lengths, unknown


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=common.BUNDLED_CORPUS)
    parser.add_argument("--side", choices=("source", "target", "both"), default="both")
    parser.add_argument("--limit", type=int, default=0, help="First N usable lines (0: all).")
    parser.add_argument("--size", type=int, default=8000, help="Target vocabulary size.")
    parser.add_argument("--top_words", default="8000,32000", help="WordPiece top-K values.")
    parser.add_argument("--max_length", type=int, default=64)
    args = parser.parse_args(argv)
    sides = ("source", "target") if args.side == "both" else (args.side,)
    rows = []
    for side in sides:
        sentences = _sentences(args.input, ("source", "target").index(side), args.limit or -1)
        runs = [
            (f"wordpiece-top{k}", _wordpiece, (int(k), args.max_length))
            for k in args.top_words.split(",")
        ]
        runs += [(f"sentencepiece-{kind}", _sentencepiece, (kind,)) for kind in ("unigram", "bpe")]
        for name, learn, extra in runs:
            with tempfile.TemporaryDirectory() as work_dir:
                if learn is _sentencepiece:
                    try:
                        result = learn(sentences, args.size, *extra, work_dir)
                    except ImportError:
                        print("sentencepiece is not installed; skipping", name)
                        continue
                else:
                    result = learn(sentences, args.size, *extra)
            seconds, size, lengths, unknown = result
            rows.append(
                {
                    "side": side,
                    "learner": name,
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
