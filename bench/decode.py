"""Decoding speed against OpenNMT-tf 2.32 on the same held-out sentences, greedy and beam 4.

Set-up, cached under --work (each step is skipped when its output exists):
1. A dataset of the bundled corpus with 8% of the pairs held out as test (about 2,800 sentences;
   the default 2.8% gives ~980), preprocessed by the project's Beam job.
2. Our reference model trained on its train split for --steps (model-Nsteps/).
3. OpenNMT-tf 2.32 (its own venv, see bench/opennmt_reference/README.md) trained on the same
   train pairs for the same --steps, batch and training recipe, tokenized with the dataset's
   SentencePiece models: equal steps of one architecture and recipe give checkpoints of
   comparable quality, which the BLEU column shows (a weak model decodes slower: it runs on to
   the maximum length).
Then both decode the same test sources in the same run, sorted by their length in source pieces
(ours through the SavedModel: as counted by its `source_lengths` signature, as `nmt-translate`
sorts), at most --batch_size sentences in flight, with the same beam width, length penalty (0.6) and
maximum length (80): OpenNMT-tf in batches of --batch_size, ours in calls of --call_size sentences
with `model.decode_slots` = --batch_size (a sentence that ends hands its place to the next waiting,
so the steps stay full; TFA's beam search, which cannot, in batches of --batch_size);
- ours: the live model under `tf.function` as evaluation during training decodes (fused greedy
  and beam search, in bfloat16 products when the model trained in bfloat16; and TFA's beam
  search in float32 as the previous path), and the exported SavedModel (raw strings in and out;
  beam 1 for greedy), both of its searches: float32 products (`serving_default`) and bfloat16
  (`serving_bfloat16`, which `nmt-translate` runs where the host computes bfloat16 natively);
- OpenNMT-tf: its model's serving function in-process (pieces in and out) and its exported
  SavedModel (SentencePiece in Python around it).
Each variant is warmed up on one batch, then timed over all, --streams batches at once (threads;
our tools decode 2 at once by default, `serving.DEFAULT_STREAMS`; OpenNMT-tf's `onmt-main infer`
one at a time: run once with --streams 1 for that), with each stream's ops on its share of the
cores in both processes (`serving.share_cores`, as our tools run: two decodes whose products
each split over every core contend for them).
OpenNMT-tf runs in its own process beside ours and times a pass when asked, so the passes are
interleaved (`measure`): --repeats rounds per variant, each one pass of OpenNMT-tf's and one of
each of ours it compares with, in ABBA order. This VM's speed drifts by 20-70% within
an hour; a ratio taken within a round is not moved by it, the two systems timed minutes apart were.
The table gives sentences/s (the fastest pass), each pass's seconds, target pieces/s and BLEU
(sacreBLEU against the references, so the two checkpoints' quality can be compared), and
ours/OpenNMT-tf per sentence (the median of the rounds' ratios and their range) and per target
piece; then how often the fused and TFA's beam search agree on the same weights (`agreement`).
Run it alone.

Agreement: the same best translation and every beam's score within 1e-4, sentence by sentence.
Two things made the searches look different where they are not:
- TFA's `finalize` backtracks each sentence's ids from its longest hypothesis, so its ranking on
  the step after that (by final scores: EOS in the length, coverage penalty) reorders the
  scores it returns but not its ids, and beam 0's ids can be another hypothesis than beam 0's
  score. This was all of the 4.0% of sentences that differed here before `tfa_beam_search`
  backtracked from its last step: teacher-forcing TFA's returned best gave another score than
  TFA reported for it; the fused search's ids and scores always matched.
- TFA skips that ranking for the sentences that end on the last step their batch runs (their
  last hypothesis keeps a score without EOS in its length), so its results there depend on the
  other sentences of the batch; the fused search ranks every sentence. Those sentences are
  compared again against TFA run to the maximum length (`*_tfa_to_max_length`).

  .venv/bin/python bench/decode.py                       # set-up once (~15 min alone), then ~5 min
  .venv/bin/python bench/decode.py --streams 1           # one batch at a time, as onmt-main infer
  .venv/bin/python bench/decode.py --limit 200 --steps 100   # smoke run
  .venv/bin/python bench/decode.py --agreement_only      # the agreement alone (a timing-free check)
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from bench import common  # noqa: E402
from pipeline import config as config_lib  # noqa: E402
from pipeline import console, paths  # noqa: E402
from trainer import (  # noqa: E402
    data,
    evaluate_main,
    evaluation,
    export,
    precision,
    serving,
    train_loop,
)

BEAM_WIDTH = 4
ONMT_DIR = os.path.join(common.REPO, "bench", "opennmt_reference")
CACHE = os.path.join(os.path.dirname(console.CACHE_LOG_DIR))
_ID_SPECS = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32)]


def prepare_dataset(work: str) -> str:
    """The bundled corpus with 8% test, 2% dev (cached)."""
    data_dir = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data_dir, "COMPLETED")):
        common.run_step(
            "Preprocessing the bundled corpus with 8% held out as test",
            [sys.executable, "-m", "preprocessing.main", f"--input={common.BUNDLED_CORPUS}"]
            + [f"--output_dir={data_dir}", "--overwrite", "--test_fraction=0.08"]
            + ["--dev_fraction=0.02"],
        )
    return data_dir


def train_ours(work: str, data_dir: str, steps: int) -> str:
    """Our reference model trained for `steps` on the dataset (cached)."""
    model_dir = os.path.join(work, f"model-{steps}steps")
    if not os.path.exists(os.path.join(model_dir, "checkpoints", "checkpoint")):
        overrides = f"train.train_steps={steps},train.eval_every=1000000"
        common.run_step(
            f"Training our reference model for {steps} steps",
            [sys.executable, "-m", "trainer.main", "--experiment=attention_seq2seq/base"]
            + [f"--data_dir={data_dir}", f"--model_dir={model_dir}"]
            + [f"--params_override={overrides}", "--noexport", "--noevaluate_test"],
        )
    return model_dir


def load_trainer(run_dir: str, decode_slots: int = 0) -> train_loop.Trainer:
    """A trainer for the run's saved config with its best (else latest) weights, read-only;
    searching `decode_slots` sentences at once when given."""
    layout = paths.RunLayout(run_dir)
    if not tf.io.gfile.exists(layout.config):
        raise SystemExit(f"{layout.config} not found: --run_dir must be a trained model_dir.")
    with tf.io.gfile.GFile(layout.config) as f:
        cfg = config_lib.from_dict(yaml.safe_load(f))
    if decode_slots:
        cfg = dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, decode_slots=decode_slots)
        )
    trainer = train_loop.Trainer(cfg, run_dir, tf.distribute.get_strategy())
    if not trainer.restore_best():
        latest = trainer.checkpoints.manager.latest_checkpoint
        if latest is None:
            raise SystemExit(f"{run_dir} has neither best/ nor checkpoints/ to restore.")
        # read(), not Trainer.restore(): restoring also truncates the run's history files.
        trainer.checkpoint.read(latest).expect_partial()
    return trainer


class _Variant(NamedTuple):
    """One of our decoders: where it runs, and one timed pass over every sentence."""

    model: str  # in_process | saved_model
    mode: str  # greedy | beam4 | beam4 (TFA)
    products: str  # float32 | bfloat16
    time: Callable[[int], tuple[float, list[str]]]  # streams -> (seconds, outputs)


def _pass_timer(decode_batch, batches, order):
    """streams -> (seconds for one pass over `batches`, `streams` at once as the serving tools
    decode, outputs in input order); warms up on the first batch before the first pass.

    The batches hold the sentences in `order`.
    """
    warm = []

    def timed(streams: int) -> tuple[float, list[str]]:
        if not warm:
            decode_batch(batches[0])
            warm.append(True)
        started = time.perf_counter()
        outputs = [
            row for rows in serving.in_streams(decode_batch, batches, streams) for row in rows
        ]
        seconds = time.perf_counter() - started
        restored = [None] * len(order)
        for position, index in enumerate(order):
            restored[index] = outputs[position]
        return seconds, restored

    return timed


def _id_batches(trainer, sources: list[str], order: list[int], batch_size: int):
    """The encoder inputs of `sources` in `order`, as the export prepares them, batched."""
    batches = []
    for start in range(0, len(order), batch_size):
        text = tf.constant([sources[i] for i in order[start : start + batch_size]])
        pieces = trainer.source_tokenizer.tokenize(text)[:, : trainer.cfg.data.max_length]
        batches.append(data.source_batch(pieces))
    return batches


class _Sizes(NamedTuple):
    """Sentences per call: of the fused searches (which refill) and of TFA's (which cannot)."""

    ours: int
    tfa: int


def piece_order(trainer, sources: list[str]) -> list[int]:
    """Indices of `sources` by their length in source pieces (stable), as OpenNMT-tf's script
    sorts its batches and evaluation sorts its id rows; raw-string tools sort by characters."""
    lengths = trainer.source_tokenizer.tokenize(tf.constant(sources)).row_lengths().numpy()
    return sorted(range(len(sources)), key=lambda i: lengths[i])


def live_variants(trainer, sources, sizes) -> list[_Variant]:
    """The in-process model's decoders: the fused searches on the model evaluation decodes with
    (`search_model`: bfloat16 products when the run trained in bfloat16), TFA's on the float32
    `decoding_model`."""
    searching, reference = trainer.search_model(), trainer.decoding_model()
    cfg = searching.cfg
    options = (BEAM_WIDTH, cfg.length_penalty, cfg.coverage_penalty, cfg.max_decode_length)
    decoders = {
        "greedy": lambda ids, lengths: searching.greedy_decode(ids, lengths)[0],
        f"beam{BEAM_WIDTH}": lambda ids, lengths: searching.beam_search(ids, lengths, *options)[0][
            :, 0
        ],
        f"beam{BEAM_WIDTH} (TFA)": lambda ids, lengths: reference.tfa_beam_search(
            ids, lengths, *options
        )[0][:, 0],
    }
    order = piece_order(trainer, sources)
    variants = []
    for name, decoder in decoders.items():
        batches = _id_batches(trainer, sources, order, sizes.tfa if "TFA" in name else sizes.ours)
        fn = tf.function(decoder, input_signature=_ID_SPECS)

        def decode_batch(batch, fn=fn):
            ids = fn(*batch).numpy()
            pieces = [evaluation.strip_after_eos(row) for row in ids]
            text = trainer.target_tokenizer.detokenize(tf.ragged.constant(pieces, dtype=tf.int32))
            return [t.decode("utf-8") for t in text.numpy()]

        products = "float32" if "TFA" in name else searching.attention_layer.compute_dtype
        variants.append(
            _Variant("in_process", name, products, _pass_timer(decode_batch, batches, order))
        )
    return variants


def saved_model_variants(trainer, sources, call_size, export_root: str) -> list[_Variant]:
    """The default SavedModel of the trainer's weights (`model.export_precision=auto`) for
    greedy and beam search, each search it holds (float32 and, where the fused search covers
    the model, bfloat16) loaded as `nmt-translate --precision` loads it, called with
    `call_size` sentences at a time (the exports stay in `export_root` while timed)."""
    variants = []
    for name, width in (("greedy", 1), (f"beam{BEAM_WIDTH}", BEAM_WIDTH)):
        # `auto` whatever the run's config says (one written before it was the default).
        export_dir = export.export_saved_model(
            trainer, os.path.join(export_root, name), beam_width=width, products=precision.AUTO
        )
        for products in ("float32", "bfloat16"):
            try:
                translator = serving.load_translator(export_dir, products)
            except serving.TranslationError:  # a TFA-decoded config: float32 alone
                continue
            # As `nmt-translate` sorts: by the pieces the export counts.
            order = serving.length_order(sources, translator.source_lengths)
            batches = [
                [sources[i] for i in order[start : start + call_size]]
                for start in range(0, len(order), call_size)
            ]

            def decode_batch(batch, translate=translator.translate):
                out = translate(sources=tf.constant(batch))["translations"].numpy()
                return [t.decode("utf-8") for t in out]

            variants.append(
                _Variant("saved_model", name, products, _pass_timer(decode_batch, batches, order))
            )
    return variants


def _share(flags: np.ndarray):
    """The fraction of true flags, 4 decimals (None when there are none)."""
    return round(float(flags.mean()), 4) if flags.size else None


def _compare(ours, reference) -> tuple[np.ndarray, np.ndarray]:
    """Per sentence: (same best translation, every beam's score within 1e-4)."""
    (ids, scores, _), (ref_ids, ref_scores, _) = ours, reference
    best = [evaluation.strip_after_eos(row) for row in ids.numpy()[:, 0]]
    ref_best = [evaluation.strip_after_eos(row) for row in ref_ids.numpy()[:, 0]]
    same = np.array([a == b for a, b in zip(best, ref_best, strict=True)])
    return same, np.all(np.abs(scores.numpy() - ref_scores.numpy()) <= 1e-4, axis=1)


def agreement(trainer, sources, order, batch_size) -> dict:
    """Fused against TFA's beam search on every sentence: same best translation, same scores.

    TFA ranks a sentence's finished hypotheses once more by their final scores (EOS in the
    length, the coverage penalty) on the step after they end, but not when they end on the last
    step their batch runs; the fused search always does. So TFA's results for those sentences
    depend on the batch, and are compared a second time with TFA run to the maximum length,
    which ranks every sentence again (`Seq2Seq.tfa_beam_search(to_max_length=True)`).
    """
    seq2seq = trainer.decoding_model()
    cfg = seq2seq.cfg
    options = (BEAM_WIDTH, cfg.length_penalty, cfg.coverage_penalty, cfg.max_decode_length)
    fused = tf.function(lambda i, n: seq2seq.beam_search(i, n, *options), input_signature=_ID_SPECS)
    tfa = tf.function(
        lambda i, n: seq2seq.tfa_beam_search(i, n, *options), input_signature=_ID_SPECS
    )
    tfa_to_max = tf.function(
        lambda i, n: seq2seq.tfa_beam_search(i, n, *options, to_max_length=True),
        input_signature=_ID_SPECS,
    )
    same_best, close, again = [], [], []
    for batch in _id_batches(trainer, sources, order, batch_size):
        reference = tfa(*batch)
        same, scores_close = _compare(fused(*batch), reference)
        same_best.append(same)
        close.append(scores_close)
        ref_ids, _, ref_lengths = reference
        again.append(ref_lengths.numpy().max(axis=1) < ref_ids.shape[2])
    same_best, close, again = map(np.concatenate, (same_best, close, again))
    # TFA's results for the sentences it did not rank again, from TFA run to the maximum.
    same_to_max, close_to_max = same_best.copy(), close.copy()
    not_again = np.flatnonzero(~again)
    redecoded = [order[position] for position in not_again]
    for start, batch in zip(
        range(0, len(redecoded), batch_size),
        _id_batches(trainer, sources, redecoded, batch_size),
        strict=True,
    ):
        positions = not_again[start : start + batch_size]
        same_to_max[positions], close_to_max[positions] = _compare(
            fused(*batch), tfa_to_max(*batch)
        )
    return {
        "sentences": len(same_best),
        "same_best_translation": _share(same_best),
        "scores_within_1e-4": _share(close),
        "tfa_ranked_again": int(again.sum()),
        "same_best_translation_where_tfa_ranked_again": _share(same_best[again]),
        "scores_within_1e-4_where_tfa_ranked_again": _share(close[again]),
        "same_best_translation_tfa_to_max_length": _share(same_to_max),
        "scores_within_1e-4_tfa_to_max_length": _share(close_to_max),
    }


def write_texts(work: str, data_dir: str, sources: list[str], references: list[str]) -> str:
    """Plain-text train pairs (TSV, cached) and test sources/references for OpenNMT-tf."""
    text_dir = os.path.join(work, "text")
    os.makedirs(text_dir, exist_ok=True)
    train_tsv = os.path.join(text_dir, "train.tsv")
    if not os.path.exists(train_tsv):
        train_sources, train_targets = evaluate_main.read_split(data_dir, "train")
        with open(train_tsv + ".partial", "w", encoding="utf-8") as f:
            f.writelines(f"{s}\t{t}\n" for s, t in zip(train_sources, train_targets, strict=True))
        os.replace(train_tsv + ".partial", train_tsv)
    for name, lines in (("test.en", sources), ("test.de", references)):
        with open(os.path.join(text_dir, name), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    return text_dir


class OpenNMT:
    """OpenNMT-tf decoding the test sources in its own venv and process
    (opennmt_reference/decode.py), timing one pass of a variant when asked.

    It tokenizes with our dataset's SentencePiece models: the same pieces in and out on both
    sides, so pieces/s compare like with like and no piece is unknown to one side only.
    """

    READY, REPLY_PREFIX = "@@ready", "@@reply "  # as opennmt_reference/decode.py writes them

    def __init__(self, args, data_dir: str, text_dir: str, limit: int, threads: int):
        """`threads`: intra-op threads per op (0: TensorFlow's default), as ours run."""
        python = os.path.join(args.onmt_venv, "bin", "python")
        if not os.path.exists(python):
            raise SystemExit(
                f"No OpenNMT-tf venv at {python}: create it as bench/opennmt_reference/README.md "
                "says, or pass --onmt_venv (or --skip_opennmt)."
            )
        layout = paths.DatasetLayout(data_dir)
        print("OpenNMT-tf: set-up (cached) and loading ...", flush=True)
        self._process = subprocess.Popen(
            [python, os.path.join(ONMT_DIR, "decode.py"), f"--work={args.onmt_work}"]
            + [f"--train_tsv={os.path.join(text_dir, 'train.tsv')}"]
            + [f"--source_sentencepiece={layout.vocabulary('source')}"]
            + [f"--target_sentencepiece={layout.vocabulary('target')}"]
            + [f"--sources={os.path.join(text_dir, 'test.en')}", f"--limit={limit}"]
            + [f"--steps={args.steps}", f"--seed={args.onmt_seed}"]
            + [f"--batch_size={args.batch_size}", f"--beam_width={BEAM_WIDTH}"]
            + [f"--intra_op_threads={threads}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        self._read_until(self.READY)

    def _read_until(self, prefix: str) -> str:
        """The rest of the next stdout line starting with `prefix`; other lines are echoed."""
        for line in self._process.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :]
            print(line, end="", flush=True)
        raise SystemExit(f"OpenNMT-tf's decode.py ended (exit status {self._process.wait()}).")

    def time(self, name: str, streams: int) -> tuple[float, list[str]]:
        """One pass of variant `name` ("saved_model/beam4", ...) at `streams`."""
        self._process.stdin.write(json.dumps({"variant": name, "streams": streams}) + "\n")
        self._process.stdin.flush()
        seconds, outputs = json.loads(self._read_until(self.REPLY_PREFIX))
        return seconds, outputs

    def close(self) -> None:
        self._process.stdin.close()
        self._process.wait()


def _opennmt_variant(model: str, mode: str) -> tuple[str, str]:
    """OpenNMT-tf's variant that ours of `model` and `mode` compares with (TFA's beam search
    with OpenNMT-tf's beam search)."""
    return model, mode.replace(" (TFA)", "")


def measure(ours: list[_Variant], opennmt: OpenNMT | None, streams: int, repeats: int) -> dict:
    """{(system, model, mode, streams, products): [(seconds, outputs) per round]}, `streams`
    batches at once.

    The VM's speed drifts by 20% and more within minutes, so OpenNMT-tf's passes are taken
    beside ours: for each of its variants, `repeats` rounds of one pass of it and one of each
    of our variants it compares with, in alternating order (ABBA), so the ratio of a round
    compares passes taken a minute or two apart.
    """
    cells = {}
    for variant in ours:
        cells.setdefault(_opennmt_variant(variant.model, variant.mode), []).append(variant)
    measured = {}
    for (model, mode), variants in cells.items():
        sequence = ([None] if opennmt else []) + variants
        for round_ in range(repeats):
            for variant in sequence if round_ % 2 == 0 else sequence[::-1]:
                if variant is None:
                    key = ("opennmt-tf", model, mode, streams, "float32")
                    result = opennmt.time(f"{model}/{mode}", streams)
                else:
                    key = ("ours", model, variant.mode, streams, variant.products)
                    result = variant.time(streams)
                measured.setdefault(key, []).append(result)
                print(f"{', '.join(map(str, key))}: {result[0]:.1f} s", flush=True)
    return measured


def _rows(measured: dict, references: list[str], target_tokenizer) -> list[dict]:
    """A row per system and variant: the fastest pass's speed; against OpenNMT-tf, the median
    and range of the rounds' ratios (each round's passes side by side)."""
    rows = []
    for (system, model, mode, streams, products), passes in measured.items():
        seconds, hypotheses = min(passes, key=lambda result: result[0])
        pieces = target_tokenizer.tokenize(tf.constant(hypotheses)).row_lengths().numpy()
        scores = evaluation.corpus_scores(hypotheses, references)
        rows.append(
            {
                "system": system,
                "model": model,
                "mode": mode,
                "streams": streams,
                "products": products,
                "sentences_per_second": round(len(hypotheses) / seconds, 1),
                "pieces_per_second": round(int(pieces.sum()) / seconds, 1),
                "bleu": scores["bleu"],
                "seconds": round(seconds, 2),
                "passes": [round(result[0], 2) for result in passes],
                "pieces": int(pieces.sum()),
            }
        )
    reference = {(r["model"], r["mode"]): r for r in rows if r["system"] == "opennmt-tf"}
    for row in rows:
        if row["system"] != "ours":
            continue
        paired = reference.get(_opennmt_variant(row["model"], row["mode"]))
        if paired:
            ratios = sorted(
                theirs / mine for mine, theirs in zip(row["passes"], paired["passes"], strict=True)
            )
            row["sentences_vs_opennmt"] = round(float(np.median(ratios)), 2)
            row["range_vs_opennmt"] = f"{ratios[0]:.2f}-{ratios[-1]:.2f}"
            row["pieces_vs_opennmt"] = round(
                row["sentences_vs_opennmt"] * row["pieces"] / paired["pieces"], 2
            )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=os.path.join(common.REPO, "runs", "bench", "decode"))
    parser.add_argument("--limit", type=int, default=0, help="Test sentences (0: all).")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=32,
        help="Most sentences in flight: OpenNMT-tf's batch, our model.decode_slots.",
    )
    parser.add_argument(
        "--call_size", type=int, default=256, help="Sentences per call of our searches."
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=serving.DEFAULT_STREAMS,
        help="Batches decoded at once on both sides, each on its share of the cores.",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="Rounds of interleaved passes per variant (ours beside OpenNMT-tf's).",
    )
    parser.add_argument("--steps", type=int, default=1500, help="Training steps of both models.")
    parser.add_argument(
        "--onmt_seed",
        type=int,
        default=2,
        help="OpenNMT-tf's training seed: its checkpoint's quality moves with it (EPYC-BF16 "
        "host: seed 1 reached test BLEU 13.2 / 14.9, seed 2 16.3 / 16.6; ours 17.8 / 15.6).",
    )
    parser.add_argument("--onmt_venv", default=os.path.join(CACHE, "onmt-venv"))
    parser.add_argument("--onmt_work", default=os.path.join(CACHE, "onmt-work", "decode"))
    parser.add_argument("--skip_opennmt", action="store_true", help="Time ours only.")
    parser.add_argument(
        "--run_dir", help="Decode with this trained model_dir instead of training one."
    )
    parser.add_argument(
        "--agreement_only",
        action="store_true",
        help="Only compare the fused and TFA's beam search (no timings, valid under load); "
        "writes bench/results/decode_agreement.json.",
    )
    args = parser.parse_args()
    data_dir = prepare_dataset(args.work)
    run_dir = args.run_dir or train_ours(args.work, data_dir, args.steps)
    threads = serving.share_cores(args.streams)  # before TensorFlow's first op
    trainer = load_trainer(run_dir, decode_slots=args.batch_size)
    sources, references = evaluate_main.read_split(data_dir, "test")
    if args.limit:
        sources, references = sources[: args.limit], references[: args.limit]
    order = serving.length_order(sources)
    print(
        f"step {trainer.step}: {len(sources)} test sentences, at most {args.batch_size} in "
        f"flight, ours in calls of {args.call_size}"
    )
    if args.agreement_only:
        agree = agreement(trainer, sources, order, args.batch_size)
        print("fused vs TFA beam search:", json.dumps(agree, indent=1))
        payload = {"step": trainer.step, "batch_size": args.batch_size, **agree}
        print("written", common.write_json("decode_agreement", payload))
        return
    text_dir = write_texts(args.work, data_dir, sources, references)
    sizes = _Sizes(ours=args.call_size, tfa=args.batch_size)
    opennmt = (
        None if args.skip_opennmt else OpenNMT(args, data_dir, text_dir, len(sources), threads)
    )
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as export_root:
        ours = live_variants(trainer, sources, sizes) + saved_model_variants(
            trainer, sources, args.call_size, export_root
        )
        measured = measure(ours, opennmt, args.streams, args.repeats)
    if opennmt:
        opennmt.close()
    rows = _rows(measured, references, trainer.target_tokenizer)
    common.print_table(
        rows,
        ["system", "model", "mode", "streams", "products", "sentences_per_second"]
        + ["pieces_per_second", "bleu", "passes", "sentences_vs_opennmt", "range_vs_opennmt"]
        + ["pieces_vs_opennmt"],
    )
    tools_choice = serving.host_choice().reason
    print(f"nmt-translate's --precision=auto on this host: {tools_choice}")
    agree = agreement(trainer, sources, order, args.batch_size)
    print("fused vs TFA beam search:", json.dumps(agree))
    payload = {
        "step": trainer.step,
        "sentences": len(sources),
        "batch_size": args.batch_size,
        "call_size": args.call_size,
        "streams": args.streams,
        "intra_op_threads": threads,
        "repeats": args.repeats,
        "beam_width": BEAM_WIDTH,
        "tools_precision": tools_choice,
        "results": rows,
        "agreement_with_tfa": agree,
    }
    print("written", common.write_json(f"decode_streams{args.streams}", payload))


if __name__ == "__main__":
    main()
