"""Training speed of the reference model: source+target non-padding tokens per second.

Each variant (graph mode or XLA, float32 or bfloat16, scheduled sampling off or on) runs in its
own process on the bundled corpus with the reference config (`attention_seq2seq/base`: 256-wide
embeddings and LSTMs, bidirectional + residual 2-layer encoder, 2-layer Luong decoder, 8k-ish
WordPiece vocabularies, batch 64, dropout 0) and the runtime a user gets by default (on a
CPU-only host: two half-batch replicas, `runtime.cpu_replicas`). After one warm-up window
(tracing, XLA compiles), it times `--windows` windows of 25 steps and reports the median. The XLA
compile count is read from XLA's own log, switched on for the XLA variants only. Run it alone:
2 cores, and any other job halves the figure.

  .venv/bin/python bench/train.py [--variants graph,xla,graph_sampling,...] [--windows 8]
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
VARIANTS = {
    "graph": "train.jit_compile=false",
    "graph_1replica": "train.jit_compile=false,runtime.cpu_replicas=1",
    "graph_buckets": "train.jit_compile=false,data.sort_pool=0",
    "graph_sampling": "train.jit_compile=false,train.sampling_probability=0.25",
    "graph_bf16": "train.jit_compile=false,train.mixed_precision=mixed_bfloat16",
    # float16 is the GPU mixed precision (bench/gpu_check.py); on a CPU it is emulated and slow.
    "graph_fp16": "train.jit_compile=false,train.mixed_precision=mixed_float16",
    "graph_bf16_1replica": (
        "train.jit_compile=false,train.mixed_precision=mixed_bfloat16,runtime.cpu_replicas=1"
    ),
    "xla": "train.jit_compile=true",
    "xla_sampling": "train.jit_compile=true,train.sampling_probability=0.25",
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
        result = measure(args.data_dir, VARIANTS[args.child], args.windows)
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
    common.print_table(
        rows,
        [
            "variant",
            "replicas",
            "tokens_per_second",
            "steps_per_second",
            "xla_compiles",
            "final_loss",
        ],
    )
    print("written", common.write_json("train", {"window_steps": WINDOW, "results": rows}))


if __name__ == "__main__":
    main()
