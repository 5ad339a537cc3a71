"""OpenNMT-tf 2.32 decoding speed, for bench/decode.py (runs in the OpenNMT-tf venv).

Set-up, cached in --work: SentencePiece and tokenized files from --train_tsv (prepare.py), then
`onmt-main train` for --steps (model.py, config.yml, seed 1, with our training recipe, RECIPE).
Then the test --sources are decoded greedy and with beam --beam_width, in length-sorted batches
of --batch_size, two ways: the model's serving function in-process (SentencePiece pieces in and
out, as `onmt-main infer` feeds it) and its exported SavedModel (with SentencePiece in Python
around each call, so both sides of the comparison take and return text). Each variant is warmed
up on one batch, then timed. Writes {"in_process/greedy": [seconds, translations in input
order], ...} to --output.
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import opennmt
import sentencepiece as spm
import tensorflow as tf
import yaml
from opennmt.utils import checkpoint as checkpoint_util

HERE = os.path.dirname(os.path.abspath(__file__))
# Our training recipe (pipeline/config.py's TrainConfig defaults), added to config.yml for a
# checkpoint of comparable quality at equal steps: with config.yml alone (the speed reference's
# constant Adam 0.001, loss averaged per sentence, no clipping) 1,500 steps reached test BLEU 0.5
# where ours reached 15.0, and a weak model decodes slowly (it runs on to the maximum length).
RECIPE = """params:
  learning_rate: 0.002
  decay_type: InvSqrtDecay
  decay_params:
    warmup_steps: 200
  average_loss_in_time: true
  clip_gradients: 5.0
  label_smoothing: 0.1
"""


def _model_fn():
    spec = importlib.util.spec_from_file_location("onmt_model", os.path.join(HERE, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model


def prepare(args) -> str:
    """SentencePiece models, vocabularies and tokenized training files (cached)."""
    data_dir = os.path.join(args.work, "data")
    if not os.path.exists(os.path.join(data_dir, "de.vocab")):
        subprocess.run(
            [sys.executable, os.path.join(HERE, "prepare.py"), f"--input={args.train_tsv}"]
            + [f"--work={args.work}", "--valid_mod=0"],
            check=True,
        )
    return data_dir


def train(args, data_dir: str) -> str:
    """`onmt-main train` for --steps, unless a checkpoint of that run exists."""
    model_dir = os.path.join(args.work, f"model-{args.steps}-our-recipe")
    if tf.train.latest_checkpoint(model_dir):
        return model_dir
    os.makedirs(model_dir, exist_ok=True)
    steps = os.path.join(model_dir, "steps.yml")
    with open(steps, "w", encoding="utf-8") as f:
        f.write(f"train:\n  max_step: {args.steps}\n  save_summary_steps: 100\n")
        f.write(RECIPE)
    print(f"OpenNMT-tf: training {args.steps} steps into {model_dir}", flush=True)
    with open(os.path.join(model_dir, "train.log"), "w", encoding="utf-8") as log:
        subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "onmt-main")]
            + ["--config", os.path.join(HERE, "config.yml"), steps]
            + ["--model", os.path.join(HERE, "model.py"), "--data_dir", data_dir]
            + ["--model_dir", model_dir, "--seed", "1", "train"],
            check=True,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return model_dir


def _runner(args, data_dir: str, model_dir: str, beam_width: int) -> opennmt.Runner:
    with open(os.path.join(HERE, "config.yml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    config["data"] = {key: os.path.join(data_dir, value) for key, value in config["data"].items()}
    config["model_dir"] = model_dir
    config["params"].update(
        beam_width=beam_width,
        length_penalty=args.length_penalty,
        maximum_decoding_length=args.max_length,
        num_hypotheses=1,
    )
    return opennmt.Runner(_model_fn()(), config)


def _padded(rows: list[list[str]]):
    """Pieces -> the serving inputs: tokens [B, T] (padded with ''), length [B]."""
    width = max(len(row) for row in rows)
    tokens = tf.constant([row + [""] * (width - len(row)) for row in rows])
    return {"tokens": tokens, "length": tf.constant([len(row) for row in rows], tf.int32)}


def _batches(sources: list[str], pieces: list[list[str]], batch_size: int):
    """(indices, source texts, serving inputs) in batches sorted by length in pieces."""
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield indices, [sources[i] for i in indices], _padded([pieces[i] for i in indices])


def _time(call, batches, count: int) -> tuple[float, list[str]]:
    """Warms up on the first batch, then times all; returns (seconds, outputs in input order)."""
    call(*batches[0][1:])
    outputs = [None] * count
    started = time.perf_counter()
    for indices, texts, inputs in batches:
        for index, text in zip(indices, call(texts, inputs), strict=True):
            outputs[index] = text
    return time.perf_counter() - started, outputs


def _detokenizer(target_sp):
    def detokenize(predictions) -> list[str]:
        tokens = predictions["tokens"].numpy()[:, 0]
        lengths = predictions["length"].numpy()[:, 0]
        return [
            target_sp.decode([t.decode("utf-8") for t in row[:length]])
            for row, length in zip(tokens, lengths, strict=True)
        ]

    return detokenize


def measure(args, data_dir: str, model_dir: str, sources: list[str]) -> dict:
    source_sp = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "en.model"))
    target_sp = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "de.model"))
    detokenize = _detokenizer(target_sp)
    batches = list(_batches(sources, source_sp.encode(sources, out_type=str), args.batch_size))
    results = {}
    for mode, width in (("greedy", 1), (f"beam{args.beam_width}", args.beam_width)):
        runner = _runner(args, data_dir, model_dir, width)
        config = runner._finalize_config()
        model = runner._init_model(config)
        checkpoint_util.Checkpoint.from_config(config, model).restore(weights_only=True)
        serve = model.serve_function()
        results[f"in_process/{mode}"] = _time(
            lambda texts, inputs, serve=serve: detokenize(serve(inputs)), batches, len(sources)
        )
        with tempfile.TemporaryDirectory(prefix="onmt-export-") as export_dir:
            runner.export(export_dir)
            signature = tf.saved_model.load(export_dir).signatures["serving_default"]

            def served(texts, inputs, signature=signature):
                # Text in and out like ours: SentencePiece runs inside the timed call.
                del inputs
                return detokenize(signature(**_padded(source_sp.encode(texts, out_type=str))))

            results[f"saved_model/{mode}"] = _time(served, batches, len(sources))
        print(f"OpenNMT-tf {mode}: done", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="Cache: data/ and model-STEPS-our-recipe/.")
    parser.add_argument("--train_tsv", required=True, help="Training pairs, source<TAB>target.")
    parser.add_argument("--sources", required=True, help="Test sources, one per line.")
    parser.add_argument("--output", required=True, help="Results JSON.")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--beam_width", type=int, default=4)
    parser.add_argument("--length_penalty", type=float, default=0.6)
    parser.add_argument("--max_length", type=int, default=80)
    args = parser.parse_args()
    data_dir = prepare(args)
    model_dir = train(args, data_dir)
    with open(args.sources, encoding="utf-8") as f:
        sources = [line.rstrip("\n") for line in f]
    if args.limit:
        sources = sources[: args.limit]
    results = measure(args, data_dir, model_dir, sources)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
