"""`nmt-run` / `make run`: the main job end to end on the bundled corpus, offline, on the CPU.

preprocess (Beam, DirectRunner) -> train (with dev BLEU) -> test BLEU -> export -> translate
in a fresh process. Each stage runs as its own process through its public entry point, exactly
as a user or a cluster would run it; this module imports none of them. The console shows one
line as each stage starts and ends, the stages' own progress lines and the summary; every
stage's full log is kept in RUN_DIR/logs (`--verbosity=1` prints everything instead).
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import time

from pipeline import console, paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED_CORPUS = os.path.join(REPO, "data", "en-de.libreoffice-help.tsv.gz")
SAMPLE_SENTENCES = (
    "Click OK to close the dialog.",
    "Select the cells that you want to print.",
    "This function returns the sum of all numbers in a range.",
)


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default=os.path.join("runs", "main"), help="Output root.")
    parser.add_argument("--input", default=BUNDLED_CORPUS, help="Parallel TSV (source<TAB>target).")
    parser.add_argument("--experiment", default="attention_seq2seq/base")
    parser.add_argument("--train_minutes", type=float, default=5.0, help="Training time budget.")
    parser.add_argument("--params_override", default="", help="Extra trainer config overrides.")
    parser.add_argument(
        "--fresh", action="store_true", help="Redo preprocessing and training from scratch."
    )
    parser.add_argument(
        "--verbosity", type=int, default=0, help="1: print every library's log lines too."
    )
    args = parser.parse_args(argv)
    if args.train_minutes <= 0:
        parser.error("--train_minutes must be positive")
    if not os.path.exists(args.input):
        parser.error(f"--input {args.input} does not exist")
    return args


class _Stages:
    """Runs the job's stages as child processes, one console line as each starts and ends."""

    def __init__(self, log_dir: str, verbosity: int, count: int):
        self.log_dir = log_dir
        self.verbosity = verbosity
        self.count = count
        self.number = 0

    def common_flags(self) -> list[str]:
        """What every stage's entry point takes: where to log, and how much to print."""
        return [f"--log_dir={self.log_dir}", f"--verbosity={self.verbosity}"]

    def begin(self, title: str) -> str:
        self.number += 1
        label = f"[{self.number}/{self.count}] {title}"
        logging.info("%s ...", label)
        return label

    def run(self, title: str, program: str, argv: list[str], **kwargs):
        """Runs one stage; stops the job if it fails. Returns (seconds, completed process)."""
        label = self.begin(title)
        argv = [*argv, *self.common_flags()]
        logging.debug("$ %s", " ".join(argv))
        started = time.time()
        result = subprocess.run(argv, check=False, **kwargs)
        seconds = time.time() - started
        log = os.path.join(self.log_dir, f"{program}.log")
        if result.returncode != 0:
            if kwargs.get("capture_output"):
                sys.stderr.write(result.stderr)
            sys.exit(
                f"{label} failed with exit code {result.returncode} after {seconds:.0f} s; "
                f"full log: {log}"
            )
        logging.info("%s done in %.0f s (log: %s)", label, seconds, log)
        return seconds, result


def _preprocess(args, stages: _Stages, layout: paths.DatasetLayout) -> float:
    title = "Preprocess (Apache Beam, DirectRunner)"
    if os.path.exists(layout.completed) and not args.fresh:
        label = stages.begin(title)
        logging.info(
            "%s: reusing the finished dataset in %s (--fresh redoes it)", label, layout.root
        )
        return 0.0
    argv = [sys.executable, "-m", "preprocessing.main", f"--input={args.input}"]
    argv += [f"--output_dir={layout.root}", "--overwrite"]
    return stages.run(title, "nmt-preprocess", argv)[0]


def _train(args, stages: _Stages, data_dir: str, model_dir: str) -> float:
    overrides = f"train.max_train_seconds={args.train_minutes * 60:.0f}"
    if args.params_override:
        overrides += "," + args.params_override
    argv = [sys.executable, "-m", "trainer.main", f"--experiment={args.experiment}"]
    argv += [f"--data_dir={data_dir}", f"--model_dir={model_dir}", f"--params_override={overrides}"]
    if args.fresh:
        argv.append("--restart")
    return stages.run("Train, evaluate on test, export", "nmt-train", argv)[0]


def _translate(stages: _Stages, export_dir: str) -> tuple[list[str], float]:
    argv = [sys.executable, "-m", "trainer.translate", f"--model={export_dir}", *SAMPLE_SENTENCES]
    seconds, result = stages.run(
        "Translate in a fresh process", "nmt-translate", argv, capture_output=True, text=True
    )
    return result.stdout.splitlines(), seconds


def _eval_records(layout: paths.RunLayout) -> list[dict]:
    """Every evaluation the run directory's history holds, oldest first."""
    if not os.path.exists(layout.eval_history):
        return []
    with open(layout.eval_history, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _this_runs(records: list[dict], earlier: list[dict]) -> list[dict]:
    """The `records` a run added to a history that held `earlier` when it started."""
    return [r for r in records if r not in earlier]


def _dev_evaluation_seconds(records: list[dict]) -> float:
    """Seconds the trainer spent on dev evaluation (loss and BLEU) in `records`."""
    return sum(r.get("seconds", 0.0) for r in records if r.get("split") == "dev")


def main(argv=None) -> None:
    args = _parse_args(argv)
    started = time.time()
    log_dir = os.path.abspath(os.path.join(args.run_dir, "logs"))
    console.start("nmt-run", log_dir, argv=sys.argv if argv is None else argv, native=False)
    logging.info("Main job into %s; full logs in %s", args.run_dir, log_dir)
    stages = _Stages(log_dir, args.verbosity, count=3)
    data_layout = paths.DatasetLayout(os.path.join(args.run_dir, "data"))
    run_layout = paths.RunLayout(os.path.join(args.run_dir, "model"))
    times = {"preprocess": _preprocess(args, stages, data_layout)}
    # The share counts only this run's evaluations: a resumed run appends to the history and a
    # restarted one truncates it (to the step it restores), so compare records, not counts.
    earlier_evaluations = _eval_records(run_layout)
    times["train"] = _train(args, stages, data_layout.root, run_layout.root)
    translations, times["translate"] = _translate(stages, run_layout.export)
    with open(os.path.join(run_layout.root, "test_results.json"), encoding="utf-8") as f:
        test = json.load(f)
    print("\n=== Summary")
    print(f"test BLEU {test['bleu']:.2f}  chrF {test['chrf']:.2f}  ({test['sentences']} sentences)")
    print(f"  {test['bleu_signature']}")
    print(f"  best dev checkpoint: {run_layout.best_checkpoint}, step {test['step']}")
    for source, translation in zip(SAMPLE_SENTENCES, translations, strict=True):
        print(f"  {source}\n    -> {translation}")
    print(f"dataset: {data_layout.root}   run: {run_layout.root}")
    print(f"SavedModel: {run_layout.export}")
    print(f"plots (training curves, attention heatmaps): {run_layout.plots}")
    print(f"TensorBoard: tensorboard --logdir {os.path.dirname(run_layout.summaries('train'))}")
    stage_times = "  ".join(f"{k} {v:.0f}s" for k, v in times.items())
    print(f"time: {stage_times}  total {time.time() - started:.0f}s")
    budget = args.train_minutes * 60
    evaluation = _dev_evaluation_seconds(_this_runs(_eval_records(run_layout), earlier_evaluations))
    print(
        f"dev evaluation during training: {evaluation:.0f}s, "
        f"{100 * evaluation / budget:.1f}% of the {budget:.0f}s training budget"
    )


if __name__ == "__main__":
    main()
