"""The training state: model, optimizer and every value a checkpoint must hold to resume exactly.

`TrainState` is also the model side that export, plots and averaging read (config, run layout,
vocabularies, the model, its float32 decoding twin and which of them searches, the step), so
none of them needs the loop that trains it.
"""

import tensorflow as tf
from absl import logging

from pipeline import config as config_lib
from pipeline import metadata as metadata_lib
from pipeline import paths, text
from pipeline import vocab as vocab_lib
from trainer import data, decoder_step, input_position, precision, schedules, task


def load_dataset_contract(data_cfg: config_lib.DataConfig):
    """Reads and checks metadata.json; returns (metadata, source vocabulary, target vocabulary)."""
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


class TrainState:
    """Model, optimizer and checkpointed counters of one run, built under `strategy`.

    Attributes:
      checkpoint: a `tf.train.Checkpoint` of everything that defines where training stands:
        model, optimizer (step, slots, loss scale), best dev BLEU, the count of skipped
        non-finite steps and the input positions. The scheduled-sampling probability is not
        among them: it is a function of the step and the (resume-checked) config.
    """

    def __init__(self, cfg: config_lib.ExperimentConfig, model_dir: str, strategy):
        self.cfg = cfg
        self.layout = paths.RunLayout(model_dir)
        self.metadata, self.source_tokens, self.target_tokens = load_dataset_contract(cfg.data)
        self.source_tokenizer = text.SubwordTokenizer(self.source_tokens)
        self.target_tokenizer = text.SubwordTokenizer(self.target_tokens)
        _check_batch_fits_replicas(cfg.data.batch_size, strategy.num_replicas_in_sync)
        policy = cfg.train.mixed_precision  # for_strategy chose it for 'auto', and logged why
        if policy not in (precision.FLOAT32, precision.BFLOAT16, precision.FLOAT16):
            raise ValueError(
                f"train.mixed_precision={policy!r} is not resolved to a policy: build the state "
                "from distribution.for_strategy(cfg, strategy), as train_loop.Trainer does."
            )
        tf.keras.mixed_precision.set_global_policy(policy)
        _check_export_precision(cfg.model, cfg.model.export_precision)
        with strategy.scope():
            self.model = task.build_model(cfg.model, self.metadata)
            self.optimizer = schedules.build_optimizer(cfg.train, policy)
            self.task = task.TranslationTask(cfg, self.model, self.optimizer)
            _create_model_variables(self.model, cfg.model.units)
            self.optimizer.build(self.model.trainable_variables)
            self._float32_twin = (
                self._build_twin(precision.FLOAT32) if policy != precision.FLOAT32 else None
            )
            self._bfloat16_twin = None
            self.best_bleu = tf.Variable(-1.0, trainable=False, name="best_bleu")
            self.nonfinite_steps = tf.Variable(0.0, trainable=False, name="nonfinite_steps")
        # Outside the strategy: one plain copy per worker, assigned in cross-replica context
        # with the positions gathered from every replica; its row count follows the replicas.
        self.input_positions = tf.Variable(
            input_position.empty_table(),
            shape=tf.TensorShape([None, input_position.SIZE]),
            trainable=False,
            name="input_positions",
        )
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.optimizer,
            best_bleu=self.best_bleu,
            nonfinite_steps=self.nonfinite_steps,
            input_positions=self.input_positions,
        )
        # Created now (it is otherwise made by the first save), so that every file written,
        # the best checkpoint included, holds the same objects and restores with all matched.
        _ = self.checkpoint.save_counter

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def _build_twin(self, policy: str):
        """The model again with `policy` layers: float32 for `decoding_model` (mixed precision
        only), bfloat16 for `export_model` (a run trained in another precision)."""
        previous = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy(policy)
        try:
            twin = task.build_model(self.cfg.model, self.metadata)
            _create_model_variables(twin, self.cfg.model.units)
        finally:
            tf.keras.mixed_precision.set_global_policy(previous)
        return twin

    def _with_current_weights(self, twin):
        """`twin` with the model's current weights copied in (mixed-precision variables read
        as float32 outside a layer's call)."""
        for target, source in zip(twin.variables, self.model.variables, strict=True):
            target.assign(source)
        return twin

    def search_model(self):
        """The model evaluation during training decodes with: under `mixed_bfloat16`, the
        training model itself where the fused searches cover its config; else `decoding_model()`.

        The fused searches (`beam_search`, `decoder_step`) keep states, log-probabilities and
        scores in float32 and run only the matrix products in the compute dtype, as training
        does, so bfloat16 there costs no measurable BLEU (README, *Precision*) and spares the
        float32 products and the twin's weight copy. TFA's decoders (the other configs) and
        float16 keep the twin. Export does too unless asked otherwise (`export_model`): a
        SavedModel may be served on machines whose bfloat16 is emulated.
        """
        if self.cfg.train.mixed_precision == precision.BFLOAT16 and decoder_step.supports(
            self.cfg.model
        ):
            return self.model
        return self.decoding_model()

    def decoding_model(self):
        """The model that translates (attention plots, export; evaluation unless
        `search_model` says otherwise): float32 layers.

        Mixed precision keeps float32 weights but runs layers in bfloat16 or float16. Decoding
        there would run TFA's LSTM states in 8 significant bits and add up beam-search
        log-probabilities in them too (TFA keeps scores in the state's dtype), so it runs a
        float32 twin instead, with the current weights copied in on each call.
        """
        if self._float32_twin is None:
            return self.model
        return self._with_current_weights(self._float32_twin)

    def export_model(self, products: str = ""):
        """The model a SavedModel is traced from: `decoding_model()` (float32 layers), or with
        `products` (default `model.export_precision`) mixed_bfloat16 one whose fused searches
        run bfloat16 products (the training model when it trained so, else a twin built on
        first use)."""
        products = products or self.cfg.model.export_precision
        _check_export_precision(self.cfg.model, products)
        if products == precision.FLOAT32:
            return self.decoding_model()
        if self.cfg.train.mixed_precision == precision.BFLOAT16:
            return self.model
        if self._bfloat16_twin is None:
            self._bfloat16_twin = self._build_twin(precision.BFLOAT16)
        return self._with_current_weights(self._bfloat16_twin)


def _check_export_precision(model_cfg: config_lib.ModelConfig, products: str):
    if products != precision.FLOAT32 and not decoder_step.supports(model_cfg):
        raise config_lib.ConfigError(
            f"model.export_precision={products} needs the fused search "
            "(model.attention=luong, model.layer_norm=false): TFA's decoders, which the other "
            "models decode with, would keep beam scores in bfloat16."
        )


def _check_batch_fits_replicas(batch_size: int, replicas: int):
    if batch_size % replicas:
        raise config_lib.ConfigError(
            f"data.batch_size={batch_size} must be divisible by the {replicas} replicas in sync."
        )


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
