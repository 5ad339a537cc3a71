"""The only module that imports TensorFlow Addons.

TFA 0.23 is its last release and works with TF 2.13-2.15 only. Everything else reaches TFA through
the names below, so the day TFA must go, this file is the one to change.
"""

import tensorflow as tf
import tensorflow_addons as tfa

# Use TFA's pure-TensorFlow fallbacks instead of its custom C++ kernels (here: GatherTree in beam
# search). Exported SavedModels then load without TFA, and XLA/TPU can compile every op.
tfa.options.disable_custom_kernel()

AttentionWrapper = tfa.seq2seq.AttentionWrapper
AttentionWrapperState = tfa.seq2seq.AttentionWrapperState
LuongAttention = tfa.seq2seq.LuongAttention
BahdanauAttention = tfa.seq2seq.BahdanauAttention
BasicDecoder = tfa.seq2seq.BasicDecoder
BeamSearchDecoder = tfa.seq2seq.BeamSearchDecoder
Sampler = tfa.seq2seq.Sampler
TrainingSampler = tfa.seq2seq.TrainingSampler
GreedyEmbeddingSampler = tfa.seq2seq.GreedyEmbeddingSampler
ScheduledEmbeddingTrainingSampler = tfa.seq2seq.ScheduledEmbeddingTrainingSampler
tile_batch = tfa.seq2seq.tile_batch
gather_tree = tfa.seq2seq.gather_tree
LayerNormLSTMCell = tfa.rnn.LayerNormLSTMCell


class WeightNormalization(tfa.layers.WeightNormalization):
    """TFA's weight normalisation with g = |v| set when the layer is built.

    TFA sets g on the layer's first call, behind a `tf.cond` on a variable. Here that would go
    wrong twice: the fused decoder reads the kernel without calling the layer (so training
    would run with g = 1 until something else first called it, and then jump), and a first
    call inside a distributed step would assign replicated variables in a replica context.
    Initialising at build (eagerly: the model's variables are created outside any step) makes
    the normalised kernel equal the wrapped layer's initial kernel, as TFA's `data_init=False`
    intends, before any step runs. Data-dependent initialisation is not offered: it would
    depend on the first batch a replica sees. The wrapper accepts what the wrapped layer
    accepts: TFA pins the input rank to the first call's, and the projection is also called on
    [batch, beam, units] (TFA's beam search) and [batch, time, units] (the loss under XLA).
    """

    def __init__(self, layer, **kw):
        super().__init__(layer, data_init=False, **kw)

    def build(self, input_shape):
        super().build(input_shape)
        self.input_spec = self.layer.input_spec
        with tf.init_scope():
            v = getattr(self.v, "_variable", self.v)  # float32, even inside a mixed layer's call
            self.g.assign(tf.norm(tf.reshape(v, [-1, self.layer_depth]), axis=0))
            self._initialized.assign(True)

    def _initialize_weights(self, inputs):
        """Nothing: g is set at build. TFA's call still traces this branch of its `tf.cond` in a
        graph, where assigning g from the layer's bfloat16 view of v fails under mixed precision."""
        return []

    def get_config(self):
        config = super().get_config()
        del config["data_init"]
        return config


def weight_normalized_kernel(wrapper: WeightNormalization):
    """g v / |v| in the variables' dtype: the kernel `wrapper` applies, without calling it."""
    variable = getattr(wrapper.v, "_variable", wrapper.v)  # the float32 variable itself
    g = getattr(wrapper.g, "_variable", wrapper.g)
    return tf.nn.l2_normalize(variable, axis=wrapper.kernel_norm_axes) * g


class BeamSearchToMaxLength(BeamSearchDecoder):
    """TFA's beam search run for `maximum_iterations` steps, even after every beam has ended.

    TFA ranks a sentence's finished hypotheses once more by their final scores on the step after
    they end, so it skips that ranking for the sentences that end on the last step their batch
    runs; run to the maximum, it ranks every sentence that ends before it, whatever the batch.
    """

    def step(self, time, inputs, state, training=None, name=None):
        outputs, state, inputs, finished = super().step(time, inputs, state, training, name)
        return outputs, state, inputs, tf.zeros_like(finished)
