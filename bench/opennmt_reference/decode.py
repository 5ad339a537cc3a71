"""OpenNMT-tf 2.32 decoding speed, for bench/decode.py (runs in the OpenNMT-tf venv).

Set-up, cached in --work: tokenized files from --train_tsv with the given SentencePiece models
(prepare.py; bench/decode.py passes its dataset's, so both systems see the same pieces), then
`onmt-main train` for --steps (model.py, config.yml, --seed, with our training recipe, RECIPE).
Each cache directory is named by a digest of its inputs (the pairs and SentencePiece models; then
RECIPE, config.yml and model.py), so a changed recipe, corpus or vocabulary trains afresh instead
of reusing a stale model (a change to prepare.py's output needs its data-* directories removed).
Then it loads four decoders of the test --sources, greedy and beam --beam_width, each in
length-sorted batches of --batch_size: the model's serving function in-process (SentencePiece
pieces in and out, as `onmt-main infer` feeds it) and its exported SavedModel (with SentencePiece
in Python around each call, so both sides of the comparison take and return text). It then
times them on request, one pass at a time (`serve_requests`: a JSON line on stdin asks for a
variant and a number of streams, batches decoded at once from threads; one stream is how
`onmt-main infer` runs), so that bench/decode.py can put each pass beside one of its own.
Each variant is warmed up on one batch before its first pass.
"""

import argparse
import concurrent.futures
import hashlib
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
READY = "@@ready"  # the line that says the variants are loaded and requests are read
REPLY_PREFIX = "@@reply "  # starts each reply line (other stdout lines are OpenNMT-tf's)
# Our training recipe (pipeline/config.py's TrainConfig, trainer/task.py's train step), added to
# config.yml for a checkpoint of comparable quality at equal steps, spelt as OpenNMT-tf reads it:
# - ours divides the summed token losses by the pairs in the batch: OpenNMT-tf's default,
#   average_loss_in_time: false (true divides by the target tokens instead);
# - ours clips the gradients' global norm at 5, which with that loss acts on nearly every step;
#   OpenNMT-tf's `clip_gradients: 5` would become Keras' `clipnorm`, which clips each variable
#   on its own, so the global norm goes through Keras' `global_clipnorm`;
# - ours runs Adam with epsilon 1e-8 (Keras' default is 1e-7).
# Spelt the other way (per-token loss, per-variable clipping; OpenNMT-tf's own SentencePiece
# models), 1,500 steps reached test BLEU 3.5 (beam 4) where ours reached 16.7; spelt this way and
# on the dataset's pieces, 16.6 (README.md, "A checkpoint of our quality").
RECIPE = """params:
  learning_rate: 0.002
  decay_type: InvSqrtDecay
  decay_params:
    warmup_steps: 200
  average_loss_in_time: false
  label_smoothing: 0.1
  optimizer_params:
    global_clipnorm: 5.0
    epsilon: 1.0e-8
"""


def _model_fn():
    spec = importlib.util.spec_from_file_location("onmt_model", os.path.join(HERE, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.model


def _digest(texts: list[str], files: list[str]) -> str:
    """A short hex digest of some strings and some files' bytes, naming a cache directory."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    for path in files:
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()[:10]


def prepare(args) -> str:
    """SentencePiece models, vocabularies and tokenized training files (cached)."""
    models = [args.source_sentencepiece, args.target_sentencepiece]
    data_dir = os.path.join(args.work, f"data-{_digest([], [args.train_tsv, *models])}")
    if not os.path.exists(os.path.join(data_dir, "COMPLETED")):
        subprocess.run(
            [sys.executable, os.path.join(HERE, "prepare.py"), f"--input={args.train_tsv}"]
            + [f"--output_dir={data_dir}"]
            + [f"--source_sentencepiece={models[0]}", f"--target_sentencepiece={models[1]}"]
            + ["--valid_mod=0"],
            check=True,
        )
        open(os.path.join(data_dir, "COMPLETED"), "w").close()
    return data_dir


def train(args, data_dir: str) -> str:
    """`onmt-main train` for --steps, unless that run finished; an unfinished one resumes."""
    files = [os.path.join(HERE, name) for name in ("config.yml", "model.py")]
    digest = _digest([os.path.basename(data_dir), RECIPE], files)
    if args.seed != 1:  # seed 1's directories predate the flag
        digest += f"-seed{args.seed}"
    model_dir = os.path.join(args.work, f"model-{args.steps}-{digest}")
    latest = tf.train.latest_checkpoint(model_dir)
    if latest and latest.endswith(f"-{args.steps}"):
        return model_dir
    os.makedirs(model_dir, exist_ok=True)
    steps = os.path.join(model_dir, "steps.yml")
    with open(steps, "w", encoding="utf-8") as f:
        f.write(f"train:\n  max_step: {args.steps}\n  save_summary_steps: 100\n")
        f.write(RECIPE)
    print(f"OpenNMT-tf: training {args.steps} steps into {model_dir}", flush=True)
    with open(os.path.join(model_dir, "train.log"), "a", encoding="utf-8") as log:
        subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "onmt-main")]
            + ["--config", os.path.join(HERE, "config.yml"), steps]
            + ["--model", os.path.join(HERE, "model.py"), "--data_dir", data_dir]
            + ["--model_dir", model_dir, "--seed", str(args.seed), "train"],
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


def _one_pass(call, batches, count: int, streams: int) -> tuple[float, list[str]]:
    """(seconds to decode all batches, `streams` at once, outputs in input order)."""
    outputs = [None] * count
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(streams) as pool:
        results = pool.map(lambda batch: call(*batch[1:]), batches)
        for (indices, _, _), texts in zip(batches, results, strict=True):
            for index, text in zip(indices, texts, strict=True):
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


class Variants:
    """OpenNMT-tf's decoders of the test sources, by name ("in_process/greedy",
    "saved_model/beam4", ...), each warmed up on one batch when first timed."""

    def __init__(self, args, data_dir: str, model_dir: str, sources: list[str], export_root: str):
        source_sp = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "en.model"))
        target_sp = spm.SentencePieceProcessor(model_file=os.path.join(data_dir, "de.model"))
        detokenize = _detokenizer(target_sp)
        self._count = len(sources)
        self._batches = list(
            _batches(sources, source_sp.encode(sources, out_type=str), args.batch_size)
        )
        self._calls, self._warm = {}, set()
        for mode, width in (("greedy", 1), (f"beam{args.beam_width}", args.beam_width)):
            runner = _runner(args, data_dir, model_dir, width)
            config = runner._finalize_config()
            model = runner._init_model(config)
            checkpoint_util.Checkpoint.from_config(config, model).restore(weights_only=True)
            serve = model.serve_function()
            self._calls[f"in_process/{mode}"] = lambda texts, inputs, serve=serve: detokenize(
                serve(inputs)
            )
            export_dir = os.path.join(export_root, mode)
            runner.export(export_dir)
            signature = tf.saved_model.load(export_dir).signatures["serving_default"]

            def served(texts, inputs, signature=signature):
                # Text in and out like ours: SentencePiece runs inside the timed call.
                del inputs
                return detokenize(signature(**_padded(source_sp.encode(texts, out_type=str))))

            self._calls[f"saved_model/{mode}"] = served

    def time(self, name: str, streams: int) -> tuple[float, list[str]]:
        """One timed pass of variant `name` over every batch, `streams` batches at once."""
        call = self._calls[name]
        if name not in self._warm:
            call(*self._batches[0][1:])
            self._warm.add(name)
        return _one_pass(call, self._batches, self._count, streams)


def serve_requests(variants: Variants, requests, replies) -> None:
    """Answers one JSON request per line, {"variant": name, "streams": n}, with one line:
    REPLY_PREFIX + JSON [seconds, outputs]. bench/decode.py sends them between its own timings,
    so each of OpenNMT-tf's passes runs beside one of ours (the VM's speed drifts)."""
    replies.write(READY + "\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        result = variants.time(request["variant"], request["streams"])
        replies.write(REPLY_PREFIX + json.dumps(result) + "\n")
        replies.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="Cache: data-DIGEST/, model-STEPS-DIGEST/.")
    parser.add_argument("--train_tsv", required=True, help="Training pairs, source<TAB>target.")
    parser.add_argument("--source_sentencepiece", required=True, help="Source SentencePiece model.")
    parser.add_argument("--target_sentencepiece", required=True, help="Target SentencePiece model.")
    parser.add_argument("--sources", required=True, help="Test sources, one per line.")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1, help="Training seed (onmt-main --seed).")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--intra_op_threads", type=int, default=0, help="Threads per op (0: TensorFlow's)."
    )
    parser.add_argument("--beam_width", type=int, default=4)
    parser.add_argument("--length_penalty", type=float, default=0.6)
    parser.add_argument("--max_length", type=int, default=80)
    args = parser.parse_args()
    if args.intra_op_threads:  # before TensorFlow's first op; training runs in onmt-main
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    data_dir = prepare(args)
    model_dir = train(args, data_dir)
    with open(args.sources, encoding="utf-8") as f:
        sources = [line.rstrip("\n") for line in f]
    if args.limit:
        sources = sources[: args.limit]
    with tempfile.TemporaryDirectory(prefix="onmt-export-") as export_root:
        variants = Variants(args, data_dir, model_dir, sources, export_root)
        serve_requests(variants, sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
