"""`nmt-run` / `make run`: the main job end to end on the bundled corpus, offline, on the CPU.

preprocess (Beam, DirectRunner) -> train (with dev BLEU) -> test BLEU -> export -> translate
in a fresh process. Each stage runs as its own process through its public entry point, exactly
as a user or a cluster would run it; this module imports none of them.
"""

import argparse
import json
import os
import subprocess
import sys
import time

from pipeline import paths

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
    args = parser.parse_args(argv)
    if args.train_minutes <= 0:
        parser.error("--train_minutes must be positive")
    if not os.path.exists(args.input):
        parser.error(f"--input {args.input} does not exist")
    return args


def _stage(title: str, argv: list[str]) -> float:
    """Runs one stage as a child process, streaming its output; stops the job if it fails."""
    print(f"\n=== {title}\n$ {' '.join(argv)}", flush=True)
    started = time.time()
    result = subprocess.run(argv, check=False)
    if result.returncode != 0:
        sys.exit(
            f"Stage '{title}' failed with exit code {result.returncode}; see its output above."
        )
    return time.time() - started


def _preprocess(args, layout: paths.DatasetLayout) -> float:
    if os.path.exists(layout.completed) and not args.fresh:
        print(
            f"\n=== Preprocess: reusing the finished dataset in {layout.root} (--fresh redoes it)"
        )
        return 0.0
    argv = [sys.executable, "-m", "preprocessing.main", f"--input={args.input}"]
    argv += [f"--output_dir={layout.root}", "--overwrite"]
    return _stage("Preprocess (Apache Beam, DirectRunner)", argv)


def _train(args, data_dir: str, model_dir: str) -> float:
    overrides = f"train.max_train_seconds={args.train_minutes * 60:.0f}"
    if args.params_override:
        overrides += "," + args.params_override
    argv = [sys.executable, "-m", "trainer.main", f"--experiment={args.experiment}"]
    argv += [f"--data_dir={data_dir}", f"--model_dir={model_dir}", f"--params_override={overrides}"]
    if args.fresh:
        argv.append("--restart")
    return _stage("Train, evaluate on test, export", argv)


def _translate(export_dir: str) -> tuple[list[str], float]:
    argv = [sys.executable, "-m", "trainer.translate", f"--model={export_dir}", *SAMPLE_SENTENCES]
    print(f"\n=== Translate in a fresh process\n$ {' '.join(argv)}", flush=True)
    started = time.time()
    result = subprocess.run(argv, check=False, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        sys.exit(f"Translation failed with exit code {result.returncode}.")
    return result.stdout.splitlines(), time.time() - started


def main(argv=None) -> None:
    args = _parse_args(argv)
    started = time.time()
    data_layout = paths.DatasetLayout(os.path.join(args.run_dir, "data"))
    run_layout = paths.RunLayout(os.path.join(args.run_dir, "model"))
    times = {"preprocess": _preprocess(args, data_layout)}
    times["train"] = _train(args, data_layout.root, run_layout.root)
    translations, times["translate"] = _translate(run_layout.export)
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


if __name__ == "__main__":
    main()
