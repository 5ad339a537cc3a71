"""Decoding speed: sentences/s and target tokens/s, greedy and beam 4, live model and SavedModel.

Restores a run's best checkpoint (else its latest) and translates the first `--limit` pairs of its
test split, batched as evaluation batches them, four ways: the live Keras model's greedy decoding
and beam search under `tf.function`, and SavedModels exported from the same weights. The serving
signature always beam-searches, so the SavedModel's greedy row is beam search of width 1 (the
same choices as greedy); SavedModel timings include the in-graph normalisation, tokenization and
detokenization. Each variant is warmed up on one batch (tracing) before it is timed. Tokens are
generated target pieces, EOS excluded; the SavedModel's are counted by re-tokenizing its output
strings (exact whenever the output round-trips, as real translations do). Run it alone: other
jobs on the cores skew the figures.

  .venv/bin/python bench/decode.py --run_dir runs/main/model [--limit 200]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from bench import common  # noqa: E402
from pipeline import config as config_lib  # noqa: E402
from pipeline import features, paths  # noqa: E402
from trainer import data, evaluation, export, train_loop  # noqa: E402

BEAM_WIDTH = 4
_ID_SPECS = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]


def load_trainer(run_dir: str) -> train_loop.Trainer:
    """A trainer for the run's saved config with its best (else latest) weights, read-only."""
    layout = paths.RunLayout(run_dir)
    if not tf.io.gfile.exists(layout.config):
        raise SystemExit(f"{layout.config} not found: --run_dir must be a trained model_dir.")
    with tf.io.gfile.GFile(layout.config) as f:
        cfg = config_lib.from_dict(yaml.safe_load(f))
    trainer = train_loop.Trainer(cfg, run_dir, tf.distribute.get_strategy())
    if not trainer.restore_best():
        latest = trainer.checkpoints.manager.latest_checkpoint
        if latest is None:
            raise SystemExit(f"{run_dir} has neither best/ nor checkpoints/ to restore.")
        # read(), not Trainer.restore(): restoring also truncates the run's history files.
        trainer.checkpoint.read(latest).expect_partial()
    return trainer


def _time(decode_batch, batches) -> tuple[float, list[list[int]]]:
    """Warms up on the first batch, then returns (seconds for all batches, pieces per sentence)."""
    decode_batch(batches[0])
    started = time.perf_counter()
    outputs = [decode_batch(batch) for batch in batches]
    seconds = time.perf_counter() - started
    return seconds, [row for output in outputs for row in output]


def live_variants(trainer, batches) -> dict:
    """{mode: (seconds, hypotheses as id lists)} for the in-process model."""
    seq2seq = trainer.decoding_model()

    @tf.function(input_signature=_ID_SPECS)
    def greedy(source_ids, source_lengths):
        ids, _, _ = seq2seq.greedy_decode(source_ids, source_lengths)
        return ids

    @tf.function(input_signature=_ID_SPECS)
    def beam(source_ids, source_lengths):
        ids, _, _ = seq2seq.beam_search(source_ids, source_lengths, beam_width=BEAM_WIDTH)
        return ids[:, 0, :]

    results = {}
    for mode, fn in (("greedy", greedy), (f"beam{BEAM_WIDTH}", beam)):

        def decode_batch(batch, fn=fn):
            ids = fn(batch[data.SOURCE_IDS], batch[data.SOURCE_LENGTHS]).numpy()
            return [evaluation.strip_after_eos(row) for row in ids]

        results[mode] = _time(decode_batch, batches)
    return results


def saved_model_variants(trainer, batches, export_root: str) -> dict:
    """{mode: (seconds, hypotheses as id lists)} for SavedModels of the trainer's weights."""
    results = {}
    for mode, width in (("greedy", 1), (f"beam{BEAM_WIDTH}", BEAM_WIDTH)):
        export_dir = export.export_saved_model(
            trainer, os.path.join(export_root, mode), beam_width=width
        )
        signature = tf.saved_model.load(export_dir).signatures[export.SERVING_SIGNATURE]

        def decode_batch(batch, signature=signature):
            return signature(sources=batch[features.SOURCE_TEXT])["translations"]

        seconds, translations = _time(decode_batch, batches)
        pieces = trainer.target_tokenizer.tokenize(tf.stack(translations)).to_list()
        results[mode] = (seconds, pieces)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", required=True, help="A trained model_dir (config.yaml).")
    parser.add_argument("--limit", type=int, default=200, help="Test sentences to translate.")
    args = parser.parse_args()
    trainer = load_trainer(args.run_dir)
    batches = list(data.make_eval_dataset(trainer.cfg.data, "test", args.limit, with_text=True))
    sentences = sum(int(tf.shape(b[data.SOURCE_IDS])[0]) for b in batches)
    print(f"step {trainer.step}: {sentences} test sentences in {len(batches)} batches")
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as export_root:
        measured = {
            "in_process": live_variants(trainer, batches),
            "saved_model": saved_model_variants(trainer, batches, export_root),
        }
    rows = []
    for model, by_mode in measured.items():
        for mode, (seconds, hypotheses) in by_mode.items():
            tokens = sum(len(h) for h in hypotheses)
            rows.append(
                {
                    "model": model,
                    "mode": mode,
                    "sentences_per_second": round(sentences / seconds, 1),
                    "tokens_per_second": round(tokens / seconds, 1),
                    "tokens": tokens,
                    "seconds": round(seconds, 3),
                }
            )
    common.print_table(
        rows, ["model", "mode", "sentences_per_second", "tokens_per_second", "tokens", "seconds"]
    )
    payload = {
        "run_dir": os.path.abspath(args.run_dir),
        "step": trainer.step,
        "sentences": sentences,
        "batch_size": trainer.cfg.data.eval_batch_size,
        "beam_width": BEAM_WIDTH,
        "results": rows,
    }
    print("written", common.write_json("decode", payload))


if __name__ == "__main__":
    main()
