"""OpenNMT-tf 2.32 model for `onmt-main --model model.py`: our reference architecture.

Embeddings 256; encoder: bidirectional LSTM (128 per direction, concatenated to 256), then a
256-unit LSTM with a residual connection (GNMT-style); decoder: 2-layer 256-unit LSTM with
input feeding and Luong attention, residual on layer 2; no dropout; zero initial decoder state.
`opennmt.encoders.GNMTEncoder(2, 256)` would instead run 256 per direction (512 wide) and
silently drop the residual (512 != 256), so the two layers are spelled out here.
"""

import functools

import opennmt
import tensorflow_addons as tfa


def model():
    return opennmt.models.SequenceToSequence(
        source_inputter=opennmt.inputters.WordEmbedder(embedding_size=256),
        target_inputter=opennmt.inputters.WordEmbedder(embedding_size=256),
        encoder=opennmt.encoders.SequentialEncoder(
            [
                opennmt.encoders.LSTMEncoder(1, 128, bidirectional=True, dropout=0.0),
                opennmt.encoders.LSTMEncoder(1, 256, residual_connections=True, dropout=0.0),
            ]
        ),
        decoder=opennmt.decoders.AttentionalRNNDecoder(
            num_layers=2,
            num_units=256,
            attention_mechanism_class=functools.partial(tfa.seq2seq.LuongAttention, scale=True),
            attention_layer_activation=None,
            residual_connections=True,  # applies to layer 2 only: layer 1 input is 512 wide
            dropout=0.0,
        ),
    )
