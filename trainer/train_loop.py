"""The trainer: owns the strategy, checkpoints, the step loop, logging, evaluation and best model.

A `TranslationTask` supplies the single-replica maths; this module runs it `steps_per_loop` steps
at a time inside one tf.function under `strategy.run`, and does everything with side effects
(checkpoints, summaries, histories) between loops, on the chief only.
"""

import json
import shutil
import time

import tensorflow as tf
import yaml
from absl import logging

from pipeline import config as config_lib
from pipeline import metadata as metadata_lib
from pipeline import paths, text
from pipeline import vocab as vocab_lib
from trainer import data, distribution, evaluation, plots, precision, schedules, task

_METRICS = ("loss_sum", "nll_sum", "tokens", "source_tokens", "grad_norm", "nonfinite")


class NonFiniteLossError(RuntimeError):
    """train.nonfinite=stop and a step produced a NaN/Inf loss or gradient."""


def load_dataset_contract(data_cfg: config_lib.DataConfig):
    """Reads and checks metadata.json; returns (metadata, source tokens, target tokens)."""
    layout = paths.DatasetLayout(data_cfg.data_dir)
    metadata = metadata_lib.read_metadata(layout)
    metadata_lib.check_compatible(metadata, layout)
    if metadata.get("max_length", data_cfg.max_length) > data_cfg.max_length:
        logging.warning(
            "Dataset allows %d pieces but data.max_length=%d: longer pairs are skipped.",
            metadata["max_length"],
            data_cfg.max_length,
        )
    source = vocab_lib.load_vocabulary(layout.vocabulary("source"))
    target = vocab_lib.load_vocabulary(layout.vocabulary("target"))
    return metadata, source, target


class Trainer:
    """Trains one experiment in one model directory, resuming from its latest checkpoint."""

    def __init__(self, cfg: config_lib.ExperimentConfig, model_dir: str, strategy):
        # The global batch, XLA under TPUs and the encoder's LSTM follow from the strategy.
        cfg = distribution.for_strategy(cfg, strategy)
        self.cfg = cfg
        self.strategy = strategy
        self.layout = paths.RunLayout(model_dir)
        self.is_chief = distribution.is_chief(strategy)
        self.metadata, source_tokens, target_tokens = load_dataset_contract(cfg.data)
        policy = cfg.train.mixed_precision  # for_strategy chose it for 'auto', and logged why
        tf.keras.mixed_precision.set_global_policy(policy)
        with strategy.scope():
            self.model = task.build_model(cfg.model, self.metadata)
            self.optimizer = schedules.build_optimizer(cfg.train, policy)
            self.task = task.TranslationTask(cfg, self.model, self.optimizer)
            self._build_variables()
            self._float32_twin = self._build_float32_twin() if policy != precision.FLOAT32 else None
            self.best_bleu = tf.Variable(-1.0, trainable=False, name="best_bleu")
            self.nonfinite_steps = tf.Variable(0.0, trainable=False, name="nonfinite_steps")
        self.source_tokenizer = text.SubwordTokenizer(source_tokens)
        self.target_tokenizer = text.SubwordTokenizer(target_tokens)
        self.source_tokens, self.target_tokens = source_tokens, target_tokens
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            best_bleu=self.best_bleu,
            nonfinite_steps=self.nonfinite_steps,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            distribution.write_dir(self.layout.checkpoints, strategy),
            max_to_keep=cfg.train.keep_checkpoints,
        )
        self.evaluator = evaluation.Evaluator(
            self.task, self._float32_twin or self.model, self.target_tokenizer, cfg.data
        )
        self._train_fn = None

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def _build_variables(self):
        """Creates model and optimizer variables so a checkpoint restores into them at once."""
        _create_model_variables(self.model, self.cfg.model.units)
        self.optimizer.build(self.model.trainable_variables)

    def _build_float32_twin(self):
        """The model again with float32 layers, for `decoding_model` (mixed precision only)."""
        policy = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy("float32")
        try:
            twin = task.build_model(self.cfg.model, self.metadata)
            _create_model_variables(twin, self.cfg.model.units)
        finally:
            tf.keras.mixed_precision.set_global_policy(policy)
        return twin

    def decoding_model(self):
        """The model that translates (evaluation, attention plots, export): float32 layers.

        Mixed precision keeps float32 weights but runs layers in bfloat16 or float16. Decoding
        there would run TFA's LSTM states in 8 significant bits and add up beam-search
        log-probabilities in them too (TFA keeps scores in the state's dtype), so it runs a
        float32 twin instead, with the current weights copied in on each call.
        """
        if self._float32_twin is None:
            return self.model
        # Outside a layer's call the mixed-precision variables read as float32.
        for target, source in zip(self._float32_twin.variables, self.model.variables, strict=True):
            target.assign(source)
        return self._float32_twin

    def restore(self) -> int:
        """Restores the newest loadable checkpoint; returns the step resumed from.

        A checkpoint that fails to load (truncated or corrupted files) is reported by name and the
        next older one is tried, so one bad write never strands a run. Every worker reads the
        chief's checkpoints (non-chief workers only ever write throwaway copies).
        """
        saved = self.saved_checkpoints()
        for path in reversed(saved):
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, ValueError, AssertionError) as e:
                logging.error(
                    "Checkpoint %s cannot be loaded (%s: %s); falling back to the previous one.",
                    path,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                continue
            logging.info(
                "Resumed from %s at step %d (sampling probability %.4f, best dev BLEU %.2f).",
                path,
                self.step,
                float(self.task.sampling_probability(self.step)),
                float(self.best_bleu.numpy()),
            )
            self._truncate_histories(self.step)
            return self.step
        if saved:
            raise RuntimeError(
                f"No checkpoint in {self.layout.checkpoints} could be loaded; "
                "rerun with --restart to start over."
            )
        return 0

    def saved_checkpoints(self) -> list[str]:
        """The chief's checkpoints, oldest first."""
        state = tf.train.get_checkpoint_state(self.layout.checkpoints)
        return list(state.all_model_checkpoint_paths) if state else []

    def _truncate_histories(self, step: int):
        """Drops history records past `step`: the resumed run writes them again."""
        if not self.is_chief:
            return
        for path in (self.layout.train_history, self.layout.eval_history):
            if not tf.io.gfile.exists(path):
                continue
            with tf.io.gfile.GFile(path) as f:
                records = [line for line in f if json.loads(line)["step"] <= step]
            with tf.io.gfile.GFile(path, "w") as f:
                f.write("".join(records))

    def check_resumable(self):
        """Refuses to resume under a config that would not continue the saved run exactly."""
        if not tf.io.gfile.exists(self.layout.config) or not self.saved_checkpoints():
            return
        with tf.io.gfile.GFile(self.layout.config) as f:
            saved = config_lib.from_dict(yaml.safe_load(f))
        conflicts = config_lib.resume_conflicts(saved, self.cfg)
        if conflicts:
            raise config_lib.ConfigError(
                f"{self.layout.root} holds checkpoints of a different config; changed fields:\n  "
                + "\n  ".join(conflicts)
                + "\nUse the saved config (--config_file of its config.yaml), another "
                "--model_dir, or --restart."
            )

    def _make_train_fn(self):
        cfg = self.cfg.train
        step_fn = self.task.train_step
        if cfg.jit_compile:
            step_fn = tf.function(step_fn, jit_compile=True)

        @tf.function
        def train_loop(iterator, num_steps):
            totals = tf.zeros([len(_METRICS)])
            for _ in tf.range(num_steps):
                step = self.optimizer.iterations
                per_replica = self.strategy.run(step_fn, args=(next(iterator), step))
                totals += tf.stack(
                    [
                        self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[n], axis=None)
                        for n in _METRICS
                    ]
                )
            return dict(zip(_METRICS, tf.unstack(totals), strict=True))

        return train_loop

    def _dataset(self, step: int):
        """The training input positioned at `step`: the batches an uninterrupted run sees next.

        Resuming skips the global batches already consumed rather than restoring an iterator:
        distributed iterators cannot be checkpointed, non-chief workers keep no checkpoints, and
        skipping works the same for any number of workers. The cost is re-reading, not
        re-training, those batches.
        """
        static = isinstance(self.strategy, tf.distribute.TPUStrategy)
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: data.make_train_dataset(
                self.cfg.data,
                self.cfg.train.seed,
                ctx,
                static,
                start_step=step,
                pad_to_buckets=self.cfg.train.jit_compile or not self.cfg.data.sort_pool,
            )
        )

    def train(self, stop_requested=lambda: False) -> dict:
        """Runs to `train.train_steps` (or the time budget), evaluating and checkpointing.

        Args:
          stop_requested: polled between loops; when true (e.g. after SIGTERM) the trainer saves
            a checkpoint and returns.
        """
        cfg = self.cfg.train
        self.check_resumable()
        start_step = self.restore()
        if self.is_chief:
            self._save_config()
        iterator = iter(self._dataset(start_step))
        self._train_fn = self._train_fn or self._make_train_fn()
        writer = self._summary_writer("train")
        started = time.time()
        last_eval = None
        while self.step < cfg.train_steps:
            num = min(cfg.steps_per_loop, cfg.train_steps - self.step)
            loop_start = time.time()
            totals = {k: float(v) for k, v in self._train_fn(iterator, tf.constant(num)).items()}
            self._log_loop(totals, num, time.time() - loop_start, started, start_step, writer)
            self._check_nonfinite(totals["nonfinite"])
            if self.step % cfg.checkpoint_every < num or self.step >= cfg.train_steps:
                self.manager.save(checkpoint_number=self.step)
            budget_spent = bool(cfg.max_train_seconds) and (
                time.time() - started > cfg.max_train_seconds
            )
            stop = self._agree(budget_spent or stop_requested())
            if stop and not budget_spent:
                logging.info("Stop requested at step %d: saving and stopping.", self.step)
                self.manager.save(checkpoint_number=self.step)
                break
            if self.step % cfg.eval_every < num or self.step >= cfg.train_steps or stop:
                last_eval = self.evaluate(limit=cfg.eval_sentences)
            if stop:
                logging.info("Time budget spent at step %d: saving and stopping.", self.step)
                self.manager.save(checkpoint_number=self.step)
                break
        return last_eval or {}

    def _check_nonfinite(self, count: float):
        if count <= 0:
            return
        self.nonfinite_steps.assign_add(count)
        logging.warning(
            "%d step(s) before step %d had a NaN/Inf loss or gradient; their updates were "
            "skipped (%d in this run so far).",
            count,
            self.step,
            float(self.nonfinite_steps.numpy()),
        )
        if self.cfg.train.nonfinite == "stop":
            raise NonFiniteLossError(
                f"Non-finite loss or gradient before step {self.step} and train.nonfinite=stop; "
                f"the last checkpoint in {self.layout.checkpoints} holds finite weights."
            )

    def _agree(self, flag: bool) -> bool:
        """True if any worker's flag is true, so all workers stop at the same step."""
        if self.strategy.extended._in_multi_worker_mode():  # noqa: SLF001 (no public API)
            value = self.strategy.reduce(
                tf.distribute.ReduceOp.SUM,
                self.strategy.run(lambda: tf.constant(float(flag))),
                axis=None,
            )
            return bool(value > 0)
        return flag

    def evaluate(self, split: str = "dev", limit: int = -1) -> dict:
        """Dev loss and beam-search BLEU; keeps the best-BLEU checkpoint on the chief."""
        with distribution.evaluation_scope(self.strategy):  # TPU: on the host CPU
            return self._evaluate(split, limit)

    def _evaluate(self, split: str, limit: int) -> dict:
        started = time.time()
        result = {"step": self.step, "split": split}
        result.update(self.evaluator.loss(split))
        # The evaluator decodes with this model: under mixed precision the call copies the
        # current weights into the float32 twin, so it must come before `quality`.
        decoding_model = self.decoding_model()
        result.update(self.evaluator.quality(split, limit))
        result["seconds"] = round(time.time() - started, 1)
        logging.info(
            "eval %s step %d: loss %.3f ppl %.1f BLEU %.2f chrF %.2f (%d sentences, %.0f s)",
            split,
            self.step,
            result["loss"],
            result["perplexity"],
            result["bleu"],
            result["chrf"],
            result["sentences"],
            result["seconds"],
        )
        if self.is_chief:
            self._append_history(self.layout.eval_history, result)
            writer = self._summary_writer(split)
            with writer.as_default(step=self.step):
                for key in ("loss", "perplexity", "bleu", "chrf"):
                    tf.summary.scalar(key, result[key])
                if split == "dev":
                    sources = [sample["source"] for sample in result["samples"][:2]]
                    plots.write_attention_summaries(
                        decoding_model,
                        self.source_tokenizer,
                        self.target_tokenizer,
                        sources,
                        self.step,
                    )
        if split == "dev" and result["bleu"] > float(self.best_bleu.numpy()):
            self.best_bleu.assign(result["bleu"])
            self._save_best()
        return result

    def _save_best(self):
        if not self.is_chief:
            return
        best = self.layout.best_checkpoint
        if tf.io.gfile.exists(best):
            tf.io.gfile.rmtree(best)
        path = self.checkpoint.write(best + "/ckpt")
        logging.info(
            "New best dev BLEU %.2f at step %d: %s", float(self.best_bleu.numpy()), self.step, path
        )

    def restore_best(self) -> bool:
        """Loads the best-BLEU weights if they exist (used before the final test and export)."""
        path = self.layout.best_checkpoint + "/ckpt"
        if not tf.io.gfile.exists(path + ".index"):
            return False
        self.checkpoint.read(path).assert_existing_objects_matched()
        return True

    def _log_loop(self, totals, num, seconds, started, start_step, writer):
        tokens = totals["tokens"]
        loss = totals["loss_sum"] / max(tokens, 1.0)
        nll = totals["nll_sum"] / max(tokens, 1.0)
        step = self.step
        rate = (tokens + totals["source_tokens"]) / max(seconds, 1e-9)
        done = step - start_step
        remaining = self.cfg.train.train_steps - step
        elapsed = time.time() - started
        eta = elapsed / max(done, 1) * remaining
        if self.cfg.train.max_train_seconds:
            eta = min(eta, max(self.cfg.train.max_train_seconds - elapsed, 0.0))
        record = {
            "step": step,
            "loss": round(loss, 4),
            "perplexity": round(float(tf.exp(min(nll, 50.0))), 2),
            "learning_rate": float(tf.keras.backend.get_value(self.optimizer.learning_rate)),
            "grad_norm": round(totals["grad_norm"] / num, 3),
            # The schedule is a function of the step: the probability the last step used.
            "sampling_probability": round(float(self.task.sampling_probability(step - 1)), 4),
            "steps_per_second": round(num / max(seconds, 1e-9), 2),
            "tokens_per_second": round(rate, 1),
        }
        logging.info(
            "step %d/%d loss %.3f ppl %.1f lr %.2e |g| %.2f p_sample %.3f %.1f steps/s "
            "%.0f tok/s ETA %s",
            step,
            self.cfg.train.train_steps,
            loss,
            record["perplexity"],
            record["learning_rate"],
            record["grad_norm"],
            record["sampling_probability"],
            record["steps_per_second"],
            rate,
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )
        if self.is_chief:
            self._append_history(self.layout.train_history, record)
            with writer.as_default(step=step):
                for key, value in record.items():
                    if key != "step":
                        tf.summary.scalar(key, value)

    def _summary_writer(self, name: str):
        if self.is_chief:
            return tf.summary.create_file_writer(self.layout.summaries(name))
        return tf.summary.create_noop_writer()

    def _append_history(self, path: str, record: dict):
        with tf.io.gfile.GFile(path, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _save_config(self):
        tf.io.gfile.makedirs(self.layout.root)
        with tf.io.gfile.GFile(self.layout.config, "w") as f:
            f.write(config_lib.to_yaml(self.cfg))

    def cleanup(self):
        """Removes a non-chief worker's throwaway checkpoint directory."""
        if not self.is_chief:
            shutil.rmtree(self.manager.directory, ignore_errors=True)


def _create_model_variables(seq2seq, units: int):
    """Runs the model once on a one-pair batch, and its projection, so every variable exists."""
    ids = tf.constant([[4, vocab_lib.EOS_ID]], tf.int32)
    lengths = tf.constant([2], tf.int32)
    seq2seq(
        {
            data.SOURCE_IDS: ids,
            data.SOURCE_LENGTHS: lengths,
            data.TARGET_IN: ids,
            data.TARGET_LENGTHS: lengths,
        }
    )
    seq2seq.projection(tf.zeros([1, units]))
