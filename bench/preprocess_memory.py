"""Where the preprocessing job's memory goes on the DirectRunner, stage by stage.

Runs `nmt-preprocess` in this process with 2 DirectRunner worker processes (by default) and
prints one row per executed stage (a fused group of transforms): its seconds, the resident memory
of the runner process before, after and at peak, the largest worker's peak, all processes summed
at peak, and the transforms it ran. The runner process (FnApiRunner) holds every PCollection
between stages, so its rows show which shuffle or side-input wait holds the corpus.

It wraps a private method of Beam's FnApiRunner (`_execute_bundle`, apache-beam 2.77) to see stage
boundaries; with another Beam version it stops with a message instead of guessing. Memory is a
size, so load from other work does not change it much; the seconds column does.

  .venv/bin/python bench/preprocess_memory.py --input /tmp/nmt-scale/corpus-350000.tsv
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apache_beam.runners.portability.fn_api_runner import fn_runner  # noqa: E402

from bench import common, preprocess_scale  # noqa: E402
from preprocessing import main as preprocess_main  # noqa: E402

_GB = 2**30


def _stage_label(stage, width: int = 110) -> str:
    """The stage's transforms as `Outer/inner` names, shortened to `width` characters."""
    names = []
    for transform in stage.transforms:
        parts = transform.unique_name.split("/")
        name = parts[0] if len(parts) == 1 else f"{parts[0]}/{parts[-1]}"
        if name not in names:
            names.append(name)
    label = " + ".join(names)
    return label if len(label) <= width else label[: width - 3] + "..."


def profile(argv: list[str]) -> list[dict]:
    """Runs the job with `argv`; returns one row per executed stage."""
    execute = getattr(fn_runner.FnApiRunner, "_execute_bundle", None)
    if execute is None:
        sys.exit("This Beam's FnApiRunner has no _execute_bundle; the profiler needs Beam 2.77.")
    memory = preprocess_scale.PeakMemory(os.getpid())
    rows, started = [], time.time()

    def timed_stage(runner, context, bundle_context, bundle_input):
        before = memory.root_rss()
        memory.reset()
        stage_start = time.time()
        result = execute(runner, context, bundle_context, bundle_input)
        rows.append(
            {
                "at_s": round(time.time() - started, 1),
                "seconds": round(time.time() - stage_start, 1),
                "runner_before_gb": round(before / _GB, 2),
                "runner_after_gb": round(memory.root_rss() / _GB, 2),
                "runner_peak_gb": round(max(memory.peak_root, before) / _GB, 2),
                "worker_peak_gb": round(memory.peak_child / _GB, 2),
                "total_peak_gb": round(memory.peak_total / _GB, 2),
                "stage": _stage_label(bundle_context.stage),
            }
        )
        return result

    fn_runner.FnApiRunner._execute_bundle = timed_stage
    try:
        preprocess_main.run(argv)
    finally:
        fn_runner.FnApiRunner._execute_bundle = execute
        memory.stop()
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="Corpus to preprocess (any --input spec).")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes.")
    parser.add_argument("--job_flags", default="", help="More nmt-preprocess flags, quoted.")
    parser.add_argument("--output_dir", default=os.path.join(tempfile.gettempdir(), "nmt-memory"))
    parser.add_argument("--min_seconds", type=float, default=0.5, help="Shorter stages: JSON only.")
    args = parser.parse_args(argv)
    job = [f"--input={args.input}", f"--output_dir={args.output_dir}", "--overwrite"]
    if args.workers > 1:
        job += ["--direct_running_mode=multi_processing", f"--direct_num_workers={args.workers}"]
    rows = profile(job + args.job_flags.split())
    columns = [
        "at_s",
        "seconds",
        "runner_before_gb",
        "runner_after_gb",
        "runner_peak_gb",
        "worker_peak_gb",
        "total_peak_gb",
        "stage",
    ]
    print()
    common.print_table([row for row in rows if row["seconds"] >= args.min_seconds], columns)
    peak = max(rows, key=lambda row: row["total_peak_gb"])
    print(
        f"\nPeak: {peak['total_peak_gb']} GB summed, runner process "
        f"{max(row['runner_peak_gb'] for row in rows)} GB, in: {peak['stage']}"
    )
    path = common.write_json(
        "preprocess_memory",
        {"machine": common.machine(), "input": args.input, "workers": args.workers, "rows": rows},
    )
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
