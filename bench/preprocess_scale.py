"""The preprocessing job at scale: wall time, pairs/s, vocabulary time, peak memory, no line lost.

For each size, a synthetic corpus (`bench/make_corpus.py`, cached in --work_dir) or a given
--input goes through `nmt-preprocess` with 2 DirectRunner worker processes. Reported per run:
wall time, pairs read per second, vocabulary learning time, pieces per sentence and too_long
rejects (from metadata.json), whether the job's own accounting balances (read = written +
rejected), and peak resident memory of the job's processes (runner and workers summed, sampled
every 0.2 s). With several sizes it prints the time per pair of the largest over the second
largest (2M / 350k by default; the target is at most 1.3). Then the output
is checked line by line against the input: every line must be either in a shard (its cleaned
text, once) or in the rejects file (the exact rejects line the job defines for it), and no shard
may hold anything else.

  .venv/bin/python bench/preprocess_scale.py --pairs 35000,350000,2000000
  .venv/bin/python bench/preprocess_scale.py --input /tmp/big.tsv      # a given corpus
  .venv/bin/python bench/preprocess_scale.py --pairs 200000 --dirty_fraction 0.02
"""

import argparse
import collections
import glob
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common, make_corpus  # noqa: E402


class PeakMemory:
    """Samples the resident memory of a process and its descendants until stopped.

    Peaks kept: all processes summed (`peak_total`), the largest single process
    (`peak_process`), the root process alone (`peak_root`) and its largest descendant
    (`peak_child`). `reset` starts a new window, for peaks per stage.
    """

    def __init__(self, pid: int, interval: float = 0.2):
        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self.reset()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def root_rss(self) -> int:
        """The root process's resident memory now."""
        return self._root.memory_info().rss

    def reset(self) -> None:
        self.peak_total = self.peak_process = self.peak_root = self.peak_child = 0

    def _sample(self):
        while not self._stop.wait(self._interval):
            try:
                root = self._root.memory_info().rss
                children = self._root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            sizes = []
            for process in children:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.NoSuchProcess:
                    continue
            self.peak_total = max(self.peak_total, root + sum(sizes))
            self.peak_process = max(self.peak_process, root, *sizes)
            self.peak_root = max(self.peak_root, root)
            self.peak_child = max(self.peak_child, 0, *sizes)

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_job(input_path: str, output_dir: str, workers: int, extra: list[str]) -> dict:
    """Runs nmt-preprocess once; returns wall time and peak memory."""
    argv = [sys.executable, "-m", "preprocessing.main", f"--input={input_path}"]
    argv += [f"--output_dir={output_dir}", "--overwrite"]
    if workers > 1:
        argv += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    argv += extra
    log_path = output_dir + ".log"
    print(f"$ {' '.join(argv)}\n  (log: {log_path})", flush=True)
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        job = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=common.REPO)
        memory = PeakMemory(job.pid)
        try:
            code = job.wait()
        finally:
            memory.stop()
            if job.poll() is None:
                job.kill()
    seconds = time.time() - started
    if code != 0:
        with open(log_path, encoding="utf-8") as log:
            sys.stderr.write(log.read()[-5000:])
        sys.exit(f"The job failed with exit code {code}; its log is {log_path}.")
    return {
        "wall_seconds": round(seconds, 1),
        "peak_rss_gb": round(memory.peak_total / 2**30, 2),
        "peak_rss_one_process_gb": round(memory.peak_process / 2**30, 2),
    }


def _digest(source: str, target: str) -> bytes:
    return hashlib.blake2b(f"{source}\t{target}".encode(), digest_size=16).digest()


def _written_pairs(output_dir: str) -> collections.Counter:
    import tensorflow as tf

    from pipeline import features, paths

    layout = paths.DatasetLayout(output_dir)
    files = [f for split in paths.SPLITS for f in glob.glob(layout.shard_pattern(split))]
    dataset = tf.data.TFRecordDataset(files).batch(4096).map(features.parse_examples)
    written = collections.Counter()
    for batch in dataset:
        sources = batch[features.SOURCE_TEXT].numpy()
        targets = batch[features.TARGET_TEXT].numpy()
        for source, target in zip(sources, targets, strict=True):
            written[_digest(source.decode(), target.decode())] += 1
    return written


def _rejects_by_origin(output_dir: str) -> dict[str, str]:
    from pipeline import paths

    rejects = {}
    for path in glob.glob(paths.DatasetLayout(output_dir).rejects_pattern):
        with open(path, encoding="utf-8") as f:
            for line in f:
                origin = line.split("\t")[1]
                if origin in rejects:
                    raise AssertionError(f"{origin} is in the rejects file twice.")
                rejects[origin] = line.rstrip("\n")
    return rejects


def check_content(input_path: str, output_dir: str, metadata: dict) -> dict:
    """Checks every input line against the output; returns counts, raises on any difference."""
    from preprocessing import clean, records

    config = metadata["flags"]
    written, rejects = _written_pairs(output_dir), _rejects_by_origin(output_dir)
    problems, lines, rejected = [], 0, 0
    opener = gzip.open if input_path.endswith(".gz") else open
    with opener(input_path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            lines += 1
            raw = raw.rstrip(b"\n").rstrip(b"\r")
            origin = f"{input_path}:{number}"
            line = records.Line(origin, raw, tuple(raw.split(b"\t")))
            if origin in rejects:
                rejected += 1
                found = rejects.pop(origin)
                reason = found.split("\t")[0]
                expected = records.format_reject(records.Reject(reason, origin, raw))
                if reason not in records.REJECT_REASONS or found != expected:
                    problems.append(f"{origin}: its rejects line is {found!r}")
                continue
            pair = clean.clean_line(line, config["max_chars"], config["reverse"])
            key = None if isinstance(pair, records.Reject) else _digest(pair.source, pair.target)
            if key is None or written[key] == 0:
                problems.append(f"{origin}: neither in a shard nor in the rejects file")
                continue
            written[key] -= 1
    extra = sum(written.values())
    if extra:
        problems.append(f"{extra} written records match no input line")
    if rejects:
        problems.append(f"{len(rejects)} rejects name no input line, e.g. {next(iter(rejects))}")
    if problems:
        raise AssertionError(f"{len(problems)} problems:\n" + "\n".join(problems[:20]))
    return {"lines_checked": lines, "in_shards": lines - rejected, "in_rejects": rejected}


def _corpus(pairs: int, dirty_fraction: float, work_dir: str) -> str:
    """A generated corpus of `pairs` lines, made once and reused from `work_dir`."""
    suffix = f"-dirty{dirty_fraction:g}" if dirty_fraction else ""
    path = os.path.join(work_dir, f"corpus-{pairs}{suffix}.tsv")
    if not os.path.exists(path):
        make_corpus.write_corpus(path + ".partial", pairs, 2_000_000, 1, dirty_fraction)
        os.rename(path + ".partial", path)
    return path


def _row(input_path: str, output_dir: str, args) -> dict:
    import json

    run = run_job(input_path, output_dir, args.workers, args.job_flags.split())
    with open(os.path.join(output_dir, "metadata.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    counts, vocab = metadata["counts"], metadata["vocab"]
    row = {
        "input": os.path.basename(input_path),
        "pairs_read": counts["read"],
        "written": sum(counts["written"].values()),
        "rejected": sum(counts["rejected"].values()),
        "accounted": counts["read"]
        == sum(counts["written"].values()) + sum(counts["rejected"].values()),
        "too_long": counts["rejected"]["too_long"],
        "wall_seconds": run["wall_seconds"],
        "pairs_per_second": round(counts["read"] / run["wall_seconds"]),
        "us_per_pair": round(1e6 * run["wall_seconds"] / counts["read"], 1),
        # The sides are learned at once on two workers, so the longer one is what the job waits.
        "vocab_seconds": max(metadata["vocab_learn_seconds"].values()),
        "pieces_per_sentence": "/".join(
            f"{vocab[side]['pieces_per_sentence']:.1f}" for side in ("source", "target")
        ),
        "peak_rss_gb": run["peak_rss_gb"],
        "peak_rss_one_process_gb": run["peak_rss_one_process_gb"],
        "vocab_sizes": {side: metadata["vocab"][side]["size"] for side in ("source", "target")},
    }
    if args.check_content:
        print("Checking every input line against the output...", flush=True)
        row["content_check"] = check_content(input_path, output_dir, metadata)
        print(
            "Every line accounted for by content: {lines_checked:,} lines, {in_shards:,} in "
            "shards, {in_rejects:,} in the rejects file.".format(**row["content_check"])
        )
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="35000,350000,2000000", help="Generated sizes.")
    parser.add_argument("--input", help="Use this TSV instead of generated corpora.")
    parser.add_argument("--dirty_fraction", type=float, default=0.0, help="Bad lines made.")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes.")
    parser.add_argument("--job_flags", default="", help="More nmt-preprocess flags, quoted.")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "nmt-scale"))
    parser.add_argument(
        "--no_check_content", dest="check_content", action="store_false", help="Skip the check."
    )
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    inputs = (
        [args.input]
        if args.input
        else [_corpus(int(n), args.dirty_fraction, args.work_dir) for n in args.pairs.split(",")]
    )
    rows = []
    for input_path in inputs:
        output_dir = os.path.join(args.work_dir, "out-" + os.path.basename(input_path))
        rows.append(_row(input_path, output_dir, args))
        common.print_table(rows, [k for k in rows[0] if k not in ("vocab_sizes", "content_check")])
    if len(rows) > 1:
        ratio = rows[-1]["us_per_pair"] / rows[-2]["us_per_pair"]
        print(
            f"Time per pair, {rows[-1]['pairs_read']:,} / {rows[-2]['pairs_read']:,} pairs: "
            f"{ratio:.2f} (target <= 1.3)"
        )
    path = common.write_json(
        "preprocess_scale",
        {"workers": args.workers, "job_flags": args.job_flags, "results": rows},
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
