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
mean difference from teacher forcing on the same seeds. Runs already in `bench/results/<name>/`
are reused, so an interrupted matrix continues where it stopped, and a step mark a saved run
lacks is trained for and merged into it. Step marks count steps, not time, so they stay valid
on a busy machine; minute marks need the machine to itself. Run it alone for time marks.
`--equal_time` compares at equal training time with step marks: a sampling mode measured at,
say, 0.86x teacher forcing's tokens/s (`bench/train.py`) is also scored at 0.86 times each
mark, the steps it makes while teacher forcing makes the mark's.

  .venv/bin/python bench/quality.py --minutes 5,10,20 [--params_override ...]
  .venv/bin/python bench/quality.py --steps 1400,3000 --params_override train.seed=2
  .venv/bin/python bench/quality.py --matrix --steps 1400,3000 --seeds 1,2,3
  .venv/bin/python bench/quality.py --matrix --minutes 5,10 --seeds 1,2,3 --name quality_time
  .venv/bin/python bench/quality.py --matrix --steps 1400 --equal_time parallel=0.86,sequential=0.58
  .venv/bin/python bench/quality.py --matrix --steps 1400 --equal_time parallel=0.86 --saved_only
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

    trainer.search_model()  # where that is the float32 twin, refreshes its weights
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


def sampling_mode(config: str) -> str:
    """The matrix config's `train.sampling_mode`, or "" for teacher forcing."""
    overrides = dict(item.split("=", 1) for item in MATRIX[config].split(","))
    if float(overrides.get("train.sampling_probability", "0")) == 0:
        return ""
    return overrides.get("train.sampling_mode", "")


def parse_speeds(flag: str) -> dict[str, float]:
    """`--equal_time parallel=0.86,sequential=0.58` -> {mode: tokens/s relative to forcing}."""
    speeds = {}
    for item in filter(None, flag.split(",")):
        mode, _, ratio = item.partition("=")
        try:
            speeds[mode] = float(ratio)
        except ValueError:
            raise SystemExit(f"--equal_time: {item!r} is not MODE=RATIO") from None
        if not 0 < speeds[mode] <= 1 or mode not in ("parallel", "sequential"):
            raise SystemExit(f"--equal_time: {item!r}: MODE parallel or sequential, 0 < RATIO <= 1")
    return speeds


def config_marks(config: str, marks: list[float], speeds: dict[str, float]) -> list[float]:
    """The config's own step marks: each mark, and where its mode has a speed ratio, the steps
    it makes in the time teacher forcing takes for the mark (equal training time)."""
    ratio = speeds.get(sampling_mode(config))
    scaled = [float(round(mark * ratio)) for mark in marks] if ratio else []
    return sorted(set(marks) | set(scaled))


def run_matrix(args, marks: list[float], by_steps: bool) -> None:
    """Each MATRIX config with each seed, in child processes; then the tables."""
    run_dir = os.path.join(common.RESULTS, args.name)
    os.makedirs(run_dir, exist_ok=True)
    names = [n for n in args.configs.split(",") if n]
    unknown = sorted(set(names) - set(MATRIX))
    if unknown:
        raise SystemExit(f"unknown --configs {unknown}; known: {', '.join(MATRIX)}")
    speeds = parse_speeds(args.equal_time)
    if speeds and not by_steps:
        raise SystemExit("--equal_time scales step marks: use it with --steps")
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in names:
            path = os.path.join(run_dir, f"{name}-seed{seed}.json")
            wanted = config_marks(name, marks, speeds) if by_steps else marks
            if args.saved_only:
                run, missing = saved_and_missing(path, wanted, by_steps)
                if run is None or missing:
                    print(f"--saved_only: {name}, seed {seed} lacks a mark; left out")
                    continue
            else:
                run = ensure_run(args, name, seed, path, wanted, by_steps)
            runs.append({"config": name, "seed": seed, **run})
    if not runs:
        raise SystemExit(f"no run in {run_dir} holds every mark")
    rows = [{"config": r["config"], "seed": r["seed"], **row} for r in runs for row in r["results"]]
    print()
    common.print_table(rows, ["config", "seed", "step", "minutes", *METRICS])
    summary = summarise(runs, marks, by_steps, speeds)
    print()
    columns = ["config", "basis", "mark", "step", "seeds"]
    columns += [f"{m}_{part}" for m in METRICS for part in ("mean", "sd", "vs_forced")]
    common.print_table(summary, columns)
    payload = {
        "marks": marks,
        "by": "steps" if by_steps else "minutes",
        "equal_time_speeds": speeds,
        "configs": {n: MATRIX[n] for n in names},
        "runs": runs,
    }
    print("written", common.write_json(args.name, {**payload, "summary": summary}))


def saved_and_missing(path: str, wanted: list[float], by_steps: bool):
    """(the run saved at `path` or None, the wanted marks it lacks). Minute marks are never hit
    exactly, so a saved run lacks none of them."""
    if not os.path.exists(path):
        return None, list(wanted)
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    have = {row["step"] for row in saved["results"]}
    return saved, [mark for mark in wanted if by_steps and int(mark) not in have]


def ensure_run(args, name: str, seed: int, path: str, wanted: list[float], by_steps: bool):
    """The run's results at every wanted mark: a saved run is reused, and a step mark it lacks
    is trained for (from scratch, in a child process) and merged into it."""
    saved, missing = saved_and_missing(path, wanted, by_steps)
    if not missing:
        return saved
    print(f"=== {name}, seed {seed}, marks {', '.join(f'{m:g}' for m in missing)}", flush=True)
    overrides = f"{MATRIX[name]},train.seed={seed}"
    if args.params_override:
        overrides += "," + args.params_override
    flag = "--steps" if by_steps else "--minutes"
    argv = [sys.executable, __file__, f"{flag}={','.join(f'{m:g}' for m in missing)}"]
    argv += [f"--data_dir={args.data_dir}", f"--experiment={args.experiment}"]
    argv += [f"--params_override={overrides}", f"--output={path}.part"]
    subprocess.run(argv, check=True, cwd=common.REPO)
    with open(f"{path}.part", encoding="utf-8") as f:
        run = json.load(f)
    if saved:
        run["results"] = sorted(saved["results"] + run["results"], key=lambda row: row["step"])
    with open(path, "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2)
    os.remove(f"{path}.part")
    return run


def summarise(runs: list[dict], marks: list[float], by_steps: bool, speeds: dict) -> list[dict]:
    """Per config, basis and mark: mean and sd over seeds, and the mean difference from teacher
    forcing at the same mark over the seeds both have. Basis "steps": the config at the mark's
    step; "time": the config at the steps it makes in teacher forcing's time for the mark (its
    `--equal_time` ratio), or, with minute marks, at the mark's minutes."""
    cells: dict = {}
    for run in runs:
        ratio = speeds.get(sampling_mode(run["config"])) if by_steps else None
        for index, row in enumerate(run["results"]):
            keys = []
            if not by_steps:
                keys.append(("time", marks[index]))
            else:
                keys += [("steps", m) for m in marks if row["step"] == int(m)]
                if ratio:
                    keys += [("time", m) for m in marks if row["step"] == round(m * ratio)]
            for basis, mark in keys:
                cells.setdefault((run["config"], basis, mark), {})[run["seed"]] = row
    summary = []
    for (config, basis, mark), cell in cells.items():
        forced = cells.get(("teacher_forcing", "steps" if by_steps else "time", mark), {})
        paired = sorted(set(cell) & set(forced))
        line = {"config": config, "basis": basis, "mark": mark}
        line["step"] = next(iter(cell.values()))["step"]
        line["seeds"] = ",".join(str(seed) for seed in sorted(cell))
        for metric in METRICS:
            values = [row[metric] for row in cell.values()]
            line[f"{metric}_mean"] = round(statistics.mean(values), 2)
            line[f"{metric}_sd"] = round(statistics.stdev(values), 2) if len(values) > 1 else "-"
            line[f"{metric}_vs_forced"] = (
                round(statistics.mean(cell[s][metric] - forced[s][metric] for s in paired), 2)
                if paired
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
    parser.add_argument(
        "--saved_only",
        action="store_true",
        help="With --matrix: the tables of the runs already saved; nothing is trained.",
    )
    parser.add_argument(
        "--equal_time",
        default="",
        help="MODE=RATIO,...: a sampling mode's tokens/s over teacher forcing's (bench/train.py); "
        "its configs are also scored at each step mark times RATIO (equal training time).",
    )
    parser.add_argument("--output", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    by_steps = bool(args.steps)
    marks = sorted(float(m) for m in (args.steps or args.minutes).split(","))
    if args.equal_time and not args.matrix:
        raise SystemExit("--equal_time applies to --matrix")
    args.data_dir = common.ensure_dataset(args.data_dir)
    if args.matrix:
        args.name = args.name or "quality_matrix"
        run_matrix(args, marks, by_steps)
        return
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
