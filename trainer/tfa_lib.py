"""The only module that imports TensorFlow Addons.

TFA 0.23 is its last release and works with TF 2.13-2.15 only. Everything else reaches TFA through
the names below, so the day TFA must go, this file is the one to change.
"""

import tensorflow_addons as tfa

# Use TFA's pure-TensorFlow fallbacks instead of its custom C++ kernels (here: GatherTree in beam
# search). Exported SavedModels then load without TFA, and XLA/TPU can compile every op.
tfa.options.disable_custom_kernel()

AttentionWrapper = tfa.seq2seq.AttentionWrapper
LuongAttention = tfa.seq2seq.LuongAttention
BahdanauAttention = tfa.seq2seq.BahdanauAttention
BasicDecoder = tfa.seq2seq.BasicDecoder
BeamSearchDecoder = tfa.seq2seq.BeamSearchDecoder
Sampler = tfa.seq2seq.Sampler
TrainingSampler = tfa.seq2seq.TrainingSampler
GreedyEmbeddingSampler = tfa.seq2seq.GreedyEmbeddingSampler
ScheduledEmbeddingTrainingSampler = tfa.seq2seq.ScheduledEmbeddingTrainingSampler
tile_batch = tfa.seq2seq.tile_batch
LayerNormLSTMCell = tfa.rnn.LayerNormLSTMCell
