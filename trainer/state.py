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
            # The twins below share these variables: a build creates them in this order.
            self._model_variables = []
            with tf.variable_creator_scope(_recording(self._model_variables)):
                self.model = task.build_model(cfg.model, self.metadata)
                _create_model_variables(self.model, cfg.model.units)
            self.optimizer = schedules.build_optimizer(cfg.train, policy)
            self.task = task.TranslationTask(cfg, self.model, self.optimizer)
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
        """The model again with `policy` layers over the model's own variables (no copy, and
        an export of both holds its weights once): float32 for `decoding_model` (mixed
        precision only), bfloat16 for `export_model` (a run trained in another precision)."""
        previous = tf.keras.mixed_precision.global_policy()
        tf.keras.mixed_precision.set_global_policy(policy)
        shared = _SharingCreator(self._model_variables)
        try:
            with tf.variable_creator_scope(shared):
                twin = task.build_model(self.cfg.model, self.metadata)
                _create_model_variables(twin, self.cfg.model.units)
        finally:
            tf.keras.mixed_precision.set_global_policy(previous)
        shared.check_all_taken()
        return twin

    def search_model(self):
        """The model evaluation during training decodes with: under `mixed_bfloat16`, the
        training model itself where the fused searches cover its config; else `decoding_model()`.

        The fused searches (`beam_search`, `decoder_step`) keep states, log-probabilities and
        scores in float32 and run only the matrix products in the compute dtype, as training
        does, so bfloat16 there costs no measurable BLEU (README, *Precision*) and spares the
        float32 products. TFA's decoders (the other configs) and float16 keep the twin. An
        export holds a float32 search beside the bfloat16 one (`export_model`): a SavedModel
        may be served on machines whose bfloat16 is emulated.
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
        float32 twin instead, over the same variables.
        """
        if self._float32_twin is None:
            return self.model
        return self._float32_twin

    def export_model(self, products: str):
        """The model a SavedModel's search is traced from, by Keras policy `products`:
        float32, `decoding_model()` (float32 layers); mixed_bfloat16, one whose fused searches
        run bfloat16 products (the training model when it trained so, else a twin built on
        first use)."""
        if products == precision.FLOAT32:
            return self.decoding_model()
        _check_export_precision(self.cfg.model, products)
        if self.cfg.train.mixed_precision == precision.BFLOAT16:
            return self.model
        if self._bfloat16_twin is None:
            self._bfloat16_twin = self._build_twin(precision.BFLOAT16)
        return self._bfloat16_twin


def _check_export_precision(model_cfg: config_lib.ModelConfig, products: str):
    """Only the fused search keeps states and scores in float32 under bfloat16 products;
    'auto' exports float32 alone for the other models."""
    if products == precision.BFLOAT16 and not decoder_step.supports(model_cfg):
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


def _recording(created: list):
    """A variable creator that appends each variable it creates to `created`."""

    def record(next_creator, **kwargs):
        variable = next_creator(**kwargs)
        created.append(variable)
        return variable

    return record


class _SharingCreator:
    """A variable creator that hands out `variables` in order instead of creating any: a
    twin's build asks for them as the model's build created them (same config, same code)."""

    def __init__(self, variables: list):
        self._variables = variables
        self._taken = 0

    def __call__(self, next_creator, **kwargs):
        del next_creator
        if self._taken == len(self._variables):
            raise ValueError("The twin creates more variables than the model it shares.")
        variable = self._variables[self._taken]
        shape = kwargs.get("shape")
        if shape is not None and not variable.shape.is_compatible_with(shape):
            raise ValueError(
                f"The twin's variable {self._taken} has shape {shape}, the "
                f"model's {variable.name} {variable.shape}."
            )
        self._taken += 1
        return variable

    def check_all_taken(self):
        if self._taken != len(self._variables):
            raise ValueError(
                f"The twin took {self._taken} of the model's {len(self._variables)} variables."
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
