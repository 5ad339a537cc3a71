"""Building blocks of the seq2seq: stateless dropout, the stacked decoder cell, the encoder,
dense layers (optionally weight-normalised) and the output projection.

Dropout is stateless and keyed on a seed the caller derives from the step, so resuming from a
checkpoint reproduces the masks an uninterrupted run would have used.
"""

import tensorflow as tf

from pipeline import config as config_lib
from trainer import recurrent, tfa_lib


def fold_seed(seed, salt: int):
    """An independent seed for one use site, derived from the step's seed."""
    return tf.random.experimental.stateless_fold_in(seed, salt)


def dropout_mask(shape, rate: float, seed, dtype):
    """An inverted-dropout mask: 0 where dropped, 1/(1-rate) where kept."""
    keep = tf.random.stateless_uniform(shape, seed) >= rate
    return tf.cast(keep, dtype) / tf.cast(1.0 - rate, dtype)


def stateless_dropout(x, rate: float, seed, training: bool):
    """Inverted dropout with a stateless mask; identity when not training or rate is 0."""
    if not training or rate <= 0.0:
        return x
    return x * dropout_mask(tf.shape(x), rate, seed, x.dtype)


def build_dense(units: int, weight_norm: bool, name: str, use_bias: bool = True):
    """A Dense layer, or the same layer under TFA's weight normalisation (w = g v / |v|, one g
    per output unit; Salimans & Kingma, 2016)."""
    dense = tf.keras.layers.Dense(units, use_bias=use_bias, name=name)
    if weight_norm:
        return tfa_lib.WeightNormalization(dense, name=f"{name}_weight_norm")
    return dense


def unwrap_dense(layer) -> tf.keras.layers.Dense:
    """The Dense layer of a `build_dense` layer."""
    return layer.layer if isinstance(layer, tfa_lib.WeightNormalization) else layer


def dense_kernel_and_bias(layer):
    """The kernel a `build_dense` layer applies (normalised if weight-normalised), and its bias.

    For the code that reads weights instead of calling the layer (the fused decoder, the
    projection's label-smoothing terms). The normalisation is the wrapper's own formula, in the
    variables' dtype (float32), so the value matches what a float32 call of the layer applies.
    """
    if isinstance(layer, tfa_lib.WeightNormalization):
        return tfa_lib.weight_normalized_kernel(layer), layer.layer.bias
    return layer.kernel, layer.bias


def build_lstm_cell(units: int, layer_norm: bool, name: str):
    if layer_norm:
        return tfa_lib.LayerNormLSTMCell(units, name=name)
    return tf.keras.layers.LSTMCell(units, name=name)


class StackedResidualCell(tf.keras.layers.AbstractRNNCell):
    """LSTM layers stacked in one cell, residual from a given layer, with a flat tuple state.

    The state is a plain tuple (h1, c1, h2, c2, ...): Keras' StackedRNNCells nests its state in
    tracked wrappers that break `BeamSearchDecoder` under Python 3.11 (README, "Known traps").
    """

    def __init__(self, units: int, num_layers: int, residual_from: int, layer_norm: bool, **kw):
        super().__init__(**kw)
        self.units = units
        self.residual_from = residual_from
        self.cells = [
            build_lstm_cell(units, layer_norm, name=f"lstm_{i}") for i in range(num_layers)
        ]

    @property
    def state_size(self):
        return tuple(size for _ in self.cells for size in (self.units, self.units))

    @property
    def output_size(self):
        return self.units

    def build(self, input_shape):
        width = input_shape[-1]
        for cell in self.cells:
            cell.build(tf.TensorShape([None, width]))
            width = self.units
        self.built = True

    def call(self, inputs, states):
        new_states = []
        x = inputs
        for i, cell in enumerate(self.cells):
            out, (h, c) = cell(x, [states[2 * i], states[2 * i + 1]])
            if i + 1 >= self.residual_from and i > 0:
                out = out + x
            new_states += [h, c]
            x = out
        return x, tuple(new_states)


class CellSequence(tf.keras.layers.Layer):
    """Any RNN cell over whole sequences, with `recurrent.FusedLSTM`'s call signature.

    For cells the fused layer does not cover (TFA's layer-normalised LSTM).
    """

    def __init__(self, cell, reverse: bool = False, **kw):
        super().__init__(**kw)
        self.reverse = reverse
        self.rnn = tf.keras.layers.RNN(
            cell, return_sequences=True, return_state=True, go_backwards=reverse
        )

    def call(self, inputs, mask):
        outputs, h, c = self.rnn(inputs, mask=mask)
        if self.reverse:  # Keras returns a backwards run's outputs last step first
            outputs = tf.reverse(outputs, axis=[1])
        return outputs, h, c


class KerasLSTM(recurrent.FusedLSTM):
    """`FusedLSTM`'s weights run by `tf.keras.layers.LSTM`, which on a GPU runs cuDNN's kernel.

    Keras chooses cuDNN at run time when its conditions hold, and they do here: tanh and sigmoid
    activations, no recurrent dropout (dropout acts between layers), masks right-padded with no
    empty row (they come from lengths, and every source ends in EOS). Elsewhere (a CPU) Keras runs
    its generic loop. The variables are the fused layer's own (names, shapes, gate order,
    unit-forget bias), so checkpoints move between the two implementations. Never inside XLA: a
    Keras LSTM under jit_compile recompiles every step (README, "Known traps").
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.keras_lstm = tf.keras.layers.LSTM(
            self.units,
            return_sequences=True,
            return_state=True,
            go_backwards=self.reverse,
            zero_output_for_mask=True,  # as the fused layer and cuDNN: zeros past each length
            name="keras_lstm",
        )
        cell = self.keras_lstm.cell
        cell.kernel, cell.recurrent_kernel, cell.bias = (
            self.kernel,
            self.recurrent_kernel,
            self.bias,
        )
        cell.built = True

    def call(self, inputs, mask):
        """Returns (outputs [B, T, units], final h, final c), as `FusedLSTM.call`."""
        outputs, h, c = self.keras_lstm(inputs, mask=mask)
        if self.reverse:  # Keras returns a backwards run's outputs last step first
            outputs = tf.reverse(outputs, axis=[1])
        return outputs, h, c


def build_sequence_lstm(
    units: int, layer_norm: bool, name: str, reverse: bool = False, keras_lstm: bool = False
):
    """The fused LSTM, its weights under Keras' LSTM (`keras_lstm`), or TFA's layer-norm cell."""
    if layer_norm:
        cell = tfa_lib.LayerNormLSTMCell(units, name="cell")
        return CellSequence(cell, reverse=reverse, name=name)
    if keras_lstm:
        return KerasLSTM(units, reverse=reverse, name=name)
    return recurrent.FusedLSTM(units, reverse=reverse, name=name)


class Encoder(tf.keras.layers.Layer):
    """GNMT-style encoder: bidirectional bottom layer, then unidirectional residual layers.

    The bottom layer runs units/2 per direction, so its concatenated output is `units` wide and
    every upper layer can add a residual connection. `model.encoder_lstm` is the one switch
    between the fused LSTM and Keras' cuDNN-capable one ('auto' is resolved with the strategy,
    `distribution.resolve`; unresolved it means fused).
    """

    def __init__(self, cfg: config_lib.ModelConfig, vocab_size: int, **kw):
        super().__init__(**kw)
        self.cfg = cfg
        self.embedding = tf.keras.layers.Embedding(vocab_size, cfg.embedding_dim, name="embedding")
        half = cfg.units // 2
        keras_lstm = cfg.encoder_lstm == "keras"
        self.forward_layer = build_sequence_lstm(
            half, cfg.layer_norm, "forward", keras_lstm=keras_lstm
        )
        self.backward_layer = build_sequence_lstm(
            cfg.units - half, cfg.layer_norm, "backward", reverse=True, keras_lstm=keras_lstm
        )
        self.upper = [
            build_sequence_lstm(cfg.units, cfg.layer_norm, f"layer_{i}", keras_lstm=keras_lstm)
            for i in range(1, cfg.encoder_layers)
        ]

    def call(self, ids, lengths, seed, training=False):
        """Returns memory [B, T, units] and the top layer's final (h, c) state."""
        mask = tf.sequence_mask(lengths, tf.shape(ids)[1])
        x = self.embedding(ids)
        x = stateless_dropout(x, self.cfg.dropout, seed, training)
        forward, _, _ = self.forward_layer(x, mask)
        backward, _, _ = self.backward_layer(x, mask)
        x, state = tf.concat([forward, backward], axis=-1), None
        for i, layer in enumerate(self.upper, start=1):
            inputs = stateless_dropout(x, self.cfg.dropout, fold_seed(seed, i), training)
            out, h, c = layer(inputs, mask)
            state = (h, c)
            x = out + x if i + 1 >= self.cfg.residual_from else out
        return x, state


class MaskedProjection(tf.keras.layers.Layer):
    """Multiplies decoder outputs by a fixed per-sentence mask, then projects them.

    The decoder loop projects one step at a time when scheduled sampling feeds back its own
    samples; a per-sentence ("variational") dropout mask lets that loop and the teacher-forced
    path drop exactly the same units.
    """

    def __init__(self, projection, mask, **kw):
        super().__init__(**kw)
        self.projection = projection
        self.mask = mask

    def call(self, outputs):
        return self.projection(outputs * tf.cast(self.mask, outputs.dtype))

    def compute_output_shape(self, input_shape):
        return self.projection.compute_output_shape(input_shape)


class OutputProjection(tf.keras.layers.Layer):
    """Decoder outputs -> vocabulary logits, optionally tied to the target embedding.

    Tied: a dense layer down to the embedding width, then the transposed embedding matrix.
    Never weight-normalised: see `Seq2Seq`'s attention layer for why.
    """

    def __init__(self, vocab_size: int, tied_embedding=None, **kw):
        super().__init__(**kw)
        self.vocab_size = vocab_size
        self.tied_embedding = tied_embedding
        if tied_embedding is None:
            self.dense = tf.keras.layers.Dense(vocab_size, name="dense")
        else:
            self.dense = tf.keras.layers.Dense(tied_embedding.output_dim, name="pre_projection")

    def build(self, input_shape):
        if self.tied_embedding is not None:
            self.bias = self.add_weight("bias", [self.vocab_size], initializer="zeros")
        super().build(input_shape)

    def call(self, outputs):
        hidden = self.dense(outputs)
        if self.tied_embedding is None:
            return hidden
        embeddings = tf.cast(self.tied_embedding.embeddings, hidden.dtype)
        return tf.matmul(hidden, embeddings, transpose_b=True) + tf.cast(self.bias, hidden.dtype)

    def precast(self):
        """`call` with its weights cast to the compute dtype once, for decoding loops.

        Under a mixed policy each call of the layer casts its float32 kernel again: in a search
        that is a cast of the whole [units, vocabulary] kernel per step, which reads twice the
        bytes that the step's product of a few rows reads from the cast kernel.
        """
        dtype = self.compute_dtype
        kernel, bias = (tf.cast(w, dtype) for w in dense_kernel_and_bias(self.dense))
        if self.tied_embedding is None:
            return lambda outputs: tf.nn.bias_add(tf.matmul(tf.cast(outputs, dtype), kernel), bias)
        embeddings = tf.cast(self.tied_embedding.embeddings, dtype)
        output_bias = tf.cast(self.bias, dtype)

        def project(outputs):
            hidden = tf.nn.bias_add(tf.matmul(tf.cast(outputs, dtype), kernel), bias)
            return tf.matmul(hidden, embeddings, transpose_b=True) + output_bias

        return project

    def label_and_mean_logits(self, outputs, labels):
        """The logit of each label and the mean logit over the vocabulary, in float32.

        Label smoothing needs only these two, and both are linear in the projection, so they
        cost a gather and a dot per position: neither the terms nor their gradients touch the
        [positions, vocabulary] logits.
        """
        hidden = self.dense(outputs) if self.tied_embedding is not None else outputs
        hidden = tf.cast(hidden, tf.float32)
        if self.tied_embedding is None:
            kernel, bias = dense_kernel_and_bias(self.dense)
            rows = tf.transpose(tf.cast(kernel, tf.float32))  # [V, H]
            bias = tf.cast(bias, tf.float32)
        else:
            rows = tf.cast(self.tied_embedding.embeddings, tf.float32)  # [V, D]
            bias = tf.cast(self.bias, tf.float32)
        label_logits = tf.reduce_sum(hidden * tf.gather(rows, labels), -1) + tf.gather(bias, labels)
        mean_row = tf.reduce_mean(rows, axis=0)
        mean_logits = tf.reduce_sum(hidden * mean_row, -1) + tf.reduce_mean(bias)
        return label_logits, mean_logits

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape)[:-1].concatenate([self.vocab_size])
