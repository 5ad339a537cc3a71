"""Translation quality against training time or steps: test BLEU, chrF, and BLEU on the longest
quarter of the test sentences, at given marks; one run, or a matrix of configs and seeds.

One run trains a config (default: the reference `attention_seq2seq/base`) on the bundled
dataset, with the runtime a user gets by default, and each time the training clock (or the step
count, with `--steps`) passes a mark, translates the whole test split with beam search and
scores it (sacreBLEU on detokenized text, with its signature). The clock counts training only
(input, steps, logging); it stops while a mark is scored, so the curve is comparable with
another system's "minutes after launch" up to its own evaluation cost. The longest quarter is
the quarter of test pairs with the most source words: exposure bias (a model trained only on
reference prefixes meeting its own) should show most there.

`--matrix` runs every config of `MATRIX` (teacher forcing, both scheduled-sampling modes under
two schedules, weight normalisation) with each of `--seeds`, each run in its own process, and
prints per-run rows and, per config and mark, the mean and standard deviation over seeds and the
mean difference from teacher forcing. Runs already in `bench/results/<name>/` are reused, so an
interrupted matrix continues where it stopped. Step marks count steps, not time, so they stay
valid on a busy machine; minute marks need the machine to itself. Run it alone for time marks.

  .venv/bin/python bench/quality.py --minutes 5,10,20 [--params_override ...]
  .venv/bin/python bench/quality.py --steps 1400,3000 --params_override train.seed=2
  .venv/bin/python bench/quality.py --matrix --steps 1400,3000 --seeds 1,2,3
  .venv/bin/python bench/quality.py --matrix --minutes 5,10 --seeds 1,2,3 --name quality_time
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

# Schedules chosen before any run, from the budgets they served on the machine of the time (5
# minutes = ~1,450 steps, 10 = ~3,000; on the 2-core EPYC of the README's rows the main job makes
# about 700 steps in 5 minutes, so step marks, not minutes, compare them there): a linear ramp to
# 0.25 over 2,000 steps, and Bengio et al.'s inverse sigmoid rising to a cap of 0.5, halfway there
# at step ~1,700 (k ln k for k = 300).
LINEAR = "train.sampling_schedule=linear,train.sampling_probability=0.25,train.sampling_k=2000"
SIGMOID = (
    "train.sampling_schedule=inverse_sigmoid,train.sampling_probability=0.5,train.sampling_k=300"
)
MATRIX = {
    "teacher_forcing": "train.sampling_probability=0",
    "parallel_linear": f"train.sampling_mode=parallel,{LINEAR}",
    "parallel_sigmoid": f"train.sampling_mode=parallel,{SIGMOID}",
    "sequential_linear": f"train.sampling_mode=sequential,{LINEAR}",
    "sequential_sigmoid": f"train.sampling_mode=sequential,{SIGMOID}",
    "weight_norm": "train.sampling_probability=0,model.weight_norm=true",
}
METRICS = ("bleu", "chrf", "bleu_longest_quarter")


def longest_quarter(sources: list[str]) -> list[int]:
    """Indices of the quarter (rounded up) of sentences with the most words, ties by position."""
    order = sorted(range(len(sources)), key=lambda i: (-len(sources[i].split()), i))
    return sorted(order[: math.ceil(len(sources) / 4)])


def score_test(trainer) -> dict:
    """BLEU and chrF on the whole test split, and BLEU on its longest quarter."""
    from trainer import evaluation

    trainer.decoding_model()  # under mixed precision, refreshes the float32 twin's weights
    sources, hypotheses, references = trainer.evaluator.translate_split("test")
    result = evaluation.corpus_scores(hypotheses, references)
    longest = longest_quarter(sources)
    quarter = evaluation.corpus_scores(
        [hypotheses[i] for i in longest], [references[i] for i in longest]
    )
    result["bleu_longest_quarter"] = quarter["bleu"]
    result["longest_quarter_sentences"] = quarter["sentences"]
    return result


def run_one(args, marks: list[float], by_steps: bool) -> dict:
    """Trains one config to each mark and scores the test split there."""

    from pipeline import config
    from trainer import distribution, train_loop

    overrides = f"data.data_dir={args.data_dir},train.train_steps=10000000"
    if args.params_override:
        overrides += "," + args.params_override
    cfg = config.build_config(args.experiment, params_override=overrides)
    rows = []
    with tempfile.TemporaryDirectory() as model_dir:
        strategy = distribution.build_strategy(cfg.runtime, distribution.cpu_replicas(cfg))
        trainer = train_loop.Trainer(cfg, model_dir, strategy)
        trained, steps = 0.0, 0
        last_report = time.perf_counter()
        for mark in marks:
            while (steps if by_steps else trained / 60) < mark:
                loop = cfg.train.steps_per_loop
                if by_steps:
                    loop = min(loop, int(mark) - steps)
                started = time.perf_counter()
                trainer.runner.run(loop)
                trained += time.perf_counter() - started
                steps += loop
                if time.perf_counter() - last_report > 60:
                    print(f"step {steps}, {trained / 60:.1f} min of training", flush=True)
                    last_report = time.perf_counter()
            started = time.perf_counter()
            result = score_test(trainer)
            row = {
                "minutes": round(trained / 60, 2),
                "step": steps,
                **{key: result[key] for key in METRICS},
                "eval_seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(row, flush=True)
    return {
        "experiment": args.experiment,
        "params_override": args.params_override,
        "precision": trainer.cfg.train.mixed_precision,
        "replicas": strategy.num_replicas_in_sync,
        "test_sentences": result["sentences"],
        "longest_quarter_sentences": result["longest_quarter_sentences"],
        "bleu_signature": result["bleu_signature"],
        "chrf_signature": result["chrf_signature"],
        "results": rows,
    }


def run_matrix(args, marks_flag: str) -> None:
    """Each MATRIX config with each seed, in child processes; then the tables."""
    run_dir = os.path.join(common.RESULTS, args.name)
    os.makedirs(run_dir, exist_ok=True)
    names = [n for n in args.configs.split(",") if n]
    unknown = sorted(set(names) - set(MATRIX))
    if unknown:
        raise SystemExit(f"unknown --configs {unknown}; known: {', '.join(MATRIX)}")
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in names:
            path = os.path.join(run_dir, f"{name}-seed{seed}.json")
            if not os.path.exists(path):
                print(f"=== {name}, seed {seed}", flush=True)
                overrides = f"{MATRIX[name]},train.seed={seed}"
                if args.params_override:
                    overrides += "," + args.params_override
                argv = [sys.executable, __file__, marks_flag, f"--data_dir={args.data_dir}"]
                argv += [f"--experiment={args.experiment}", f"--params_override={overrides}"]
                argv += [f"--output={path}"]
                subprocess.run(argv, check=True, cwd=common.REPO)
            with open(path, encoding="utf-8") as f:
                runs.append({"config": name, "seed": seed, **json.load(f)})
    rows = [{"config": r["config"], "seed": r["seed"], **row} for r in runs for row in r["results"]]
    print()
    common.print_table(rows, ["config", "seed", "step", "minutes", *METRICS])
    summary = summarise(runs, "step" if args.steps else "minutes")
    print()
    columns = ["config", "mark", "seeds"]
    columns += [f"{m}_{part}" for m in METRICS for part in ("mean", "sd", "vs_forced")]
    common.print_table(summary, columns)
    payload = {"marks": marks_flag, "configs": {n: MATRIX[n] for n in names}, "runs": runs}
    print("written", common.write_json(args.name, {**payload, "summary": summary}))


def summarise(runs: list[dict], mark_key: str) -> list[dict]:
    """Per config and mark: mean and sd over seeds, and the mean minus teacher forcing's."""
    cells: dict = {}
    for run in runs:
        for index, row in enumerate(run["results"]):
            cells.setdefault((run["config"], index), []).append(row)
    summary = []
    for (config, index), cell in cells.items():
        forced = cells.get(("teacher_forcing", index))
        line = {"config": config, "mark": cell[0][mark_key], "seeds": len(cell)}
        for metric in METRICS:
            values = [r[metric] for r in cell]
            line[f"{metric}_mean"] = round(statistics.mean(values), 2)
            line[f"{metric}_sd"] = round(statistics.stdev(values), 2) if len(values) > 1 else "-"
            line[f"{metric}_vs_forced"] = (
                round(statistics.mean(values) - statistics.mean(r[metric] for r in forced), 2)
                if forced
                else "-"
            )
        summary.append(line)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--minutes", default="5,10,20", help="Comma-separated marks.")
    parser.add_argument("--steps", default="", help="Comma-separated step marks (not minutes).")
    parser.add_argument("--experiment", default="attention_seq2seq/base")
    parser.add_argument("--params_override", default="", help="Applied to every run.")
    parser.add_argument("--name", default="", help="Results name (bench/results/NAME.json).")
    parser.add_argument("--matrix", action="store_true", help="Run MATRIX x --seeds.")
    parser.add_argument("--configs", default=",".join(MATRIX), help="The matrix configs to run.")
    parser.add_argument("--seeds", default="1,2,3", help="The matrix seeds (train.seed).")
    parser.add_argument("--output", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    by_steps = bool(args.steps)
    marks_flag = f"--steps={args.steps}" if by_steps else f"--minutes={args.minutes}"
    args.data_dir = common.ensure_dataset(args.data_dir)
    if args.matrix:
        args.name = args.name or "quality_matrix"
        run_matrix(args, marks_flag)
        return
    marks = sorted(float(m) for m in (args.steps or args.minutes).split(","))
    result = run_one(args, marks, by_steps)
    if args.output:  # a matrix run: its parent prints the tables
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"machine": common.machine(), **result}, f, indent=2)
        return
    print()
    common.print_table(result["results"], ["minutes", "step", *METRICS, "eval_seconds"])
    print(result["bleu_signature"])
    print(result["chrf_signature"])
    print("written", common.write_json(args.name or "quality", result))


if __name__ == "__main__":
    main()
