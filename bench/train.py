"""Training speed of the reference model: source+target non-padding tokens per second.

Each variant (graph mode or XLA, float32 or bfloat16, scheduled sampling off, parallel or
sequential) runs in its own process on the bundled corpus with the reference config
(`attention_seq2seq/base`: 256-wide embeddings and LSTMs, bidirectional + residual 2-layer
encoder, 2-layer Luong decoder, 8k-ish WordPiece vocabularies, batch 64, dropout 0) and the
runtime a user gets by default (on a CPU-only host: two half-batch replicas,
`runtime.cpu_replicas`). After one warm-up window (tracing, XLA compiles), it times `--windows`
windows of 25 steps and reports the median, and its ratio to the teacher-forced variant of the
same precision and compiler in the same run (`vs_forced`). Scheduled sampling runs at a constant
probability of 0.25 (`_all`: 1.0, the parallel mode's worst case). The XLA compile count is read
from XLA's own log, switched on for the XLA variants only. Run it alone: 2 cores, and any other
job halves the figure.

  .venv/bin/python bench/train.py [--variants graph,graph_parallel,...] [--windows 8]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

WINDOW = 25
F32, BF16 = "train.mixed_precision=float32", "train.mixed_precision=mixed_bfloat16"
FP16 = "train.mixed_precision=mixed_float16"
GRAPH, XLA = "train.jit_compile=false", "train.jit_compile=true"
PARALLEL = "train.sampling_probability=0.25,train.sampling_mode=parallel"
PARALLEL_ALL = "train.sampling_probability=1.0,train.sampling_mode=parallel"
SEQUENTIAL = "train.sampling_probability=0.25,train.sampling_mode=sequential"
ONE_REPLICA = "runtime.cpu_replicas=1"
# name: (overrides, the teacher-forced variant it is compared with)
VARIANTS = {
    "graph": ((GRAPH, F32), "graph"),
    "graph_parallel": ((GRAPH, F32, PARALLEL), "graph"),
    "graph_parallel_all": ((GRAPH, F32, PARALLEL_ALL), "graph"),
    "graph_sequential": ((GRAPH, F32, SEQUENTIAL), "graph"),
    "graph_weight_norm": ((GRAPH, F32, "model.weight_norm=true"), "graph"),
    "graph_1replica": ((GRAPH, F32, ONE_REPLICA), "graph"),
    "graph_buckets": ((GRAPH, F32, "data.sort_pool=0"), "graph"),
    "graph_bf16": ((GRAPH, BF16), "graph_bf16"),
    "graph_bf16_parallel": ((GRAPH, BF16, PARALLEL), "graph_bf16"),
    "graph_bf16_sequential": ((GRAPH, BF16, SEQUENTIAL), "graph_bf16"),
    "graph_bf16_1replica": ((GRAPH, BF16, ONE_REPLICA), "graph_bf16"),
    # float16 is the GPU mixed precision (bench/gpu_check.py); on a CPU it is emulated and slow.
    "graph_fp16": ((GRAPH, FP16), "graph"),
    "xla": ((XLA, F32), "xla"),
    "xla_parallel": ((XLA, F32, PARALLEL), "xla"),
    "xla_sequential": ((XLA, F32, SEQUENTIAL), "xla"),
}


def measure(data_dir: str, overrides: str, windows: int) -> dict:
    """Runs in the child process: returns the timed windows of one variant."""

    from pipeline import config
    from trainer import distribution, train_loop

    cfg = config.build_config(
        "attention_seq2seq/base",
        params_override=f"data.data_dir={data_dir},model.dropout=0.0,{overrides}",
    )
    strategy = distribution.build_strategy(cfg.runtime, distribution.cpu_replicas(cfg))
    trainer = train_loop.Trainer(cfg, "/tmp/bench-train-unused", strategy)
    rates, steps_per_second = [], []
    for window in range(windows + 1):
        started = time.perf_counter()
        totals = trainer.runner.run(WINDOW)
        tokens = totals["tokens"] + totals["source_tokens"]
        seconds = time.perf_counter() - started
        if window:  # the first window traces and compiles
            rates.append(tokens / seconds)
            steps_per_second.append(WINDOW / seconds)
    return {
        "tokens_per_second": round(statistics.median(rates), 1),
        "steps_per_second": round(statistics.median(steps_per_second), 2),
        "windows": [round(r, 1) for r in rates],
        "final_loss": round(totals["loss_sum"] / totals["tokens"], 4),
        "replicas": strategy.num_replicas_in_sync,
    }


def run_variant(name: str, data_dir: str, windows: int) -> dict:
    xla = name.startswith("xla")
    env = dict(os.environ)
    if xla:  # XLA logs each compile; per-call VLOG checks are kept out of the other variants
        env.update(TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="device_compiler=1")
    argv = [sys.executable, __file__, f"--child={name}", f"--data_dir={data_dir}"]
    argv.append(f"--windows={windows}")
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=common.REPO)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-5000:])
        raise SystemExit(f"variant {name} failed")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    out["xla_compiles"] = result.stderr.count("Compilation of XLA executable") if xla else "-"
    return {"variant": name, **out}


def _add_ratios(rows):
    """`vs_forced`: tokens/s over the same run's teacher-forced variant (same precision and
    compiler), where that variant was measured."""
    rates = {row["variant"]: row["tokens_per_second"] for row in rows}
    for row in rows:
        baseline = rates.get(VARIANTS[row["variant"]][1])
        row["vs_forced"] = round(row["tokens_per_second"] / baseline, 3) if baseline else "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument(  # float16 runs when asked (GPU hosts): emulated, it is slow on a CPU
        "--variants", default=",".join(v for v in VARIANTS if v != "graph_fp16")
    )
    parser.add_argument("--windows", type=int, default=8, help="Timed 25-step windows.")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(args.data_dir, ",".join(VARIANTS[args.child][0]), args.windows)
        print("RESULT " + json.dumps(result))
        return
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    data_dir = common.ensure_dataset(args.data_dir)
    rows = []
    for name in names:
        print(f"measuring {name} ...", flush=True)
        rows.append(run_variant(name, data_dir, args.windows))
    _add_ratios(rows)
    common.print_table(
        rows,
        [
            "variant",
            "replicas",
            "tokens_per_second",
            "vs_forced",
            "steps_per_second",
            "xla_compiles",
            "final_loss",
        ],
    )
    print("written", common.write_json("train", {"window_steps": WINDOW, "results": rows}))


if __name__ == "__main__":
    main()
