"""Preprocessing throughput: the Beam job with 1 and 2 workers against a plain Python loop.

The loop does the job's work with the job's own functions (clean, deduplicate, split, count
words, learn both vocabularies, tokenize in batches, filter, encode, shard, write the same files
and metadata) in one process with no Beam: the ceiling for this machine. Every variant runs as a
fresh process, so each pays the same interpreter and TensorFlow start-up, and each must produce
the same counts and vocabulary fingerprints. Target: Beam with 2 workers at >= 0.7x the loop.

  .venv/bin/python bench/preprocess.py [--limit 5000] [--workers 1,2] [--repeats 1]
"""

import argparse
import collections
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

TARGET_RATIO = 0.7


def _loop(input_path: str, output_dir: str) -> None:
    """The whole job as one single-process loop over the job's own functions."""
    import tensorflow as tf
    from apache_beam.io import filesystems

    from pipeline import metadata as metadata_lib
    from pipeline import paths, text
    from pipeline import vocab as vocab_lib
    from preprocessing import (
        clean,
        encode,
        io,
        pipeline_def,
        records,
        split,
        summary,
        vocabulary,
        write,
    )

    start = time.time()
    config = pipeline_def.PreprocessConfig(inputs=(io.TsvInput(input_path),))
    layout = paths.DatasetLayout(output_dir)
    fingerprint = summary.InputFingerprint()
    digest = fingerprint.create_accumulator()
    pairs, rejects, seen = [], [], set()
    read = 0
    with filesystems.FileSystems.open(input_path) as f:
        for number, raw in enumerate(iter(f.readline, b""), start=1):
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            line = records.Line(f"{input_path}:{number}", raw, tuple(raw.split(b"\t")))
            read += 1
            digest = fingerprint.add_input(digest, line)
            result = clean.clean_line(line, config.max_chars, config.reverse)
            if isinstance(result, records.Reject):
                rejects.append(result)
            elif clean.dedup_key(result) in seen:
                rejects.append(records.Reject(records.DUPLICATE, result.origin, result.raw))
            else:
                seen.add(clean.dedup_key(result))
                split_name = split.assign_split(
                    result.source, config.dev_fraction, config.test_fraction
                )
                pairs.append((split_name, result))

    vocabs, vocab_info = {}, {}
    for side in vocabulary.SIDES:
        counts = vocabulary.count_words(
            getattr(pair, side) for split_name, pair in pairs if split_name == split.TRAIN
        )
        vocabs[side] = vocabulary.learn_vocabulary(counts, config.vocab)
        tf.io.gfile.makedirs(os.path.dirname(layout.vocabulary(side)))
        vocab_lib.write_vocabulary(layout.vocabulary(side), vocabs[side])
        info = {"size": len(vocabs[side]), "fingerprint": vocab_lib.fingerprint(vocabs[side])}
        vocab_info[side] = info

    tokenizers = {side: text.SubwordTokenizer(tokens) for side, tokens in vocabs.items()}
    by_file_set = collections.defaultdict(list)
    histogram = collections.Counter()
    for begin in range(0, len(pairs), 1024):
        batch = pairs[begin : begin + 1024]
        ids = {
            side: tokenizers[side]
            .tokenize(tf.constant([getattr(pair, side) for _, pair in batch]))
            .to_list()
            for side in vocabulary.SIDES
        }
        for (split_name, pair), source_ids, target_ids in zip(
            batch, ids["source"], ids["target"], strict=True
        ):
            tokenized = records.TokenizedPair(split_name, source_ids, target_ids, pair)
            problem = encode.length_problem(
                len(source_ids), len(target_ids), config.max_length, config.max_length_ratio
            )
            if problem:
                rejects.append(records.Reject(problem, pair.origin, pair.raw))
                continue
            by_file_set[split_name].append(encode.encode(tokenized)[1])
            histogram[("source", len(source_ids))] += 1
            histogram[("target", len(target_ids))] += 1
    by_file_set[pipeline_def.REJECTS] = [records.format_reject(r).encode() for r in rejects]

    files = []
    for name, file_set in pipeline_def.file_sets(layout, config.num_shards).items():
        values = by_file_set[name]
        num_shards = file_set.shard_count(sum(len(v) for v in values))
        shards = collections.defaultdict(list)
        for value in values:
            shards[zlib.crc32(value) % num_shards].append(value)
        for index in range(num_shards):
            path = file_set.path(index, num_shards)
            tf.io.gfile.makedirs(os.path.dirname(path))
            files.append((name, path))
            if file_set.file_format == write.TFRECORD:
                with tf.io.TFRecordWriter(path) as writer:
                    for value in shards[index]:
                        writer.write(value)
            else:
                with open(path, "wb") as f:
                    f.write(b"".join(value + b"\n" for value in shards[index]))

    metadata = summary.build_metadata(
        by_input={
            input_path: {
                "read": read,
                "written": sum(len(by_file_set[name]) for name in paths.SPLITS),
                "rejected": len(rejects),
            }
        },
        written={name: len(by_file_set[name]) for name in paths.SPLITS},
        rejected=collections.Counter(r.reason for r in rejects),
        vocabularies=vocab_info,
        histogram=list(histogram.items()),
        files=files,
        settings={
            "shared_vocab": False,
            "max_length": config.max_length,
            "input_paths": [input_path],
            "beam_options": {},
            "flags": {},
        },
        input_fingerprint=fingerprint.extract_output(digest),
        elapsed_seconds=time.time() - start,
    )
    metadata_lib.write_metadata(layout, metadata)
    with open(layout.completed, "w", encoding="utf-8") as f:
        f.write("")


def _limited_corpus(limit: int, work_dir: str) -> str:
    if not limit:
        return common.BUNDLED_CORPUS
    path = os.path.join(work_dir, f"first-{limit}.tsv.gz")
    with gzip.open(common.BUNDLED_CORPUS, "rb") as src, gzip.open(path, "wb") as dst:
        for _, line in zip(range(limit), src, strict=False):
            dst.write(line)
    return path


def _timed(argv: list[str], output_dir: str) -> tuple[float, dict]:
    started = time.time()
    result = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=common.REPO)
    seconds = time.time() - started
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        sys.exit(f"{' '.join(argv)} failed with exit code {result.returncode}.")
    with open(os.path.join(output_dir, "metadata.json"), encoding="utf-8") as f:
        return seconds, json.load(f)


def _variants(input_path: str, workers: list[int], work_dir: str):
    """(name, argv, output_dir) of every variant, the loop first."""
    out = os.path.join(work_dir, "loop")
    yield "python loop (1 process)", [sys.executable, __file__, "--loop", input_path, out], out
    for count in workers:
        out = os.path.join(work_dir, f"beam-{count}")
        argv = [sys.executable, "-m", "preprocessing.main", f"--input={input_path}"]
        argv += [f"--output_dir={out}", "--overwrite", "--direct_running_mode=multi_processing"]
        argv += [f"--direct_num_workers={count}"]
        yield f"beam DirectRunner, {count} worker process(es)", argv, out


def _same_dataset(a: dict, b: dict) -> bool:
    keys = ("counts", "length_histograms", "num_shards")
    fingerprints = [{s: m["vocab"][s]["fingerprint"] for s in ("source", "target")} for m in (a, b)]
    return all(a[k] == b[k] for k in keys) and fingerprints[0] == fingerprints[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="Use the first N lines (0: all).")
    parser.add_argument("--workers", default="1,2", help="Beam worker counts to run.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per variant (best kept).")
    parser.add_argument("--loop", nargs=2, metavar=("INPUT", "OUTPUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loop:
        _loop(*args.loop)
        return

    workers = [int(w) for w in args.workers.split(",")]
    rows, reference, loop_seconds = [], None, None
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as work_dir:
        input_path = _limited_corpus(args.limit, work_dir)
        load_before = os.getloadavg()[0]
        for name, command, output_dir in _variants(input_path, workers, work_dir):
            runs = [_timed(command, output_dir) for _ in range(args.repeats)]
            seconds, metadata = min(runs, key=lambda run: run[0])
            reference = reference or metadata
            loop_seconds = loop_seconds or seconds
            read = metadata["counts"]["read"]
            rows.append(
                {
                    "variant": name,
                    "pairs_read": read,
                    "wall_seconds": round(seconds, 1),
                    "pairs_per_second": round(read / seconds),
                    "vs_loop": round(loop_seconds / seconds, 2),
                    "same_output": _same_dataset(reference, metadata),
                }
            )
        load_after = os.getloadavg()[0]
    common.print_table(rows, list(rows[0]))
    two_workers = next(
        (r for r in rows[1:] if r["variant"].endswith(" 2 worker process(es)")), None
    )
    verdict = {
        "target_ratio": TARGET_RATIO,
        "ratio": two_workers["vs_loop"] if two_workers else None,
        "met": bool(two_workers and two_workers["vs_loop"] >= TARGET_RATIO),
    }
    print(
        f"Beam at 2 workers / loop: {verdict['ratio']} (target >= {TARGET_RATIO}); "
        f"load average {load_before:.1f} before, {load_after:.1f} after."
    )
    path = common.write_json(
        "preprocess",
        {
            "input": input_path
            if args.limit == 0
            else f"{common.BUNDLED_CORPUS} (first {args.limit})",
            "repeats": args.repeats,
            "load_average": {"before": load_before, "after": load_after},
            "results": rows,
            "beam_2_workers_vs_loop": verdict,
        },
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
