"""The deep attention seq2seq: training forward pass, greedy decoding and beam search.

`Seq2Seq` works on padded id batches; tokenization and BOS/EOS handling live in the input
pipeline and the export module. Attention is TFA's `AttentionWrapper` over the top encoder layer
with input feeding; decoding runs `beam_search` over `decoder_step` where that covers the model,
else TFA's `BasicDecoder` and `BeamSearchDecoder`.
"""

import tensorflow as tf

from pipeline import config as config_lib
from pipeline import vocab as vocab_lib
from trainer import attention_decoder, beam_search, decoder_step, layers, sampling, tfa_lib


class Seq2Seq(tf.keras.Model):
    """Encoder, attention decoder and output projection for one model config."""

    def __init__(self, cfg: config_lib.ModelConfig, source_vocab_size: int, target_vocab_size: int):
        super().__init__(name="seq2seq")
        self.cfg = cfg
        self.target_vocab_size = target_vocab_size
        self.encoder = layers.Encoder(cfg, source_vocab_size, name="encoder")
        self.target_embedding = tf.keras.layers.Embedding(
            target_vocab_size, cfg.embedding_dim, name="target_embedding"
        )
        self.decoder_cell = layers.StackedResidualCell(
            cfg.units, cfg.decoder_layers, cfg.residual_from, cfg.layer_norm, name="decoder_cell"
        )
        if cfg.attention == "luong":
            self.attention = tfa_lib.LuongAttention(cfg.units, scale=True, memory=None)
        else:
            self.attention = tfa_lib.BahdanauAttention(cfg.units, normalize=True, memory=None)
        # Two wrappers over the same cell, mechanism and attention layer: one records the
        # alignment history (for attention pictures), the other does not pay for it.
        self.attention_layer = tf.keras.layers.Dense(
            cfg.units, use_bias=False, name="attention_layer"
        )
        self.attention_cell, self.attention_cell_with_history = (
            tfa_lib.AttentionWrapper(
                self.decoder_cell,
                self.attention,
                attention_layer=self.attention_layer,
                alignment_history=history,
                output_attention=cfg.attention == "luong",
                name="attention_wrapper",
            )
            for history in (False, True)
        )
        self.projection = layers.OutputProjection(
            target_vocab_size,
            tied_embedding=self.target_embedding if cfg.tie_embeddings else None,
            name="projection",
        )

    def uses_fused_decoder(self) -> bool:
        """Whether teacher-forced decoding runs `attention_decoder`'s kernel (else TFA's loop)."""
        cfg = self.cfg
        return cfg.fused_decoder and cfg.attention == "luong" and not cfg.layer_norm

    def _cell(self, alignment_history: bool):
        return self.attention_cell_with_history if alignment_history else self.attention_cell

    def _setup_attention(self, memory, lengths, batch_size, alignment_history=False):
        """Points the attention at `memory`; returns the decoder's initial state."""
        self.attention.setup_memory(memory, memory_sequence_length=lengths)
        cell = self._cell(alignment_history)
        return cell.get_initial_state(batch_size=batch_size, dtype=memory.dtype)

    def call(self, inputs, training=False):
        """Teacher-forced decoder outputs [B, T, units] (no projection; see `project`).

        Args:
          inputs: dict with source_ids [B, S], source_lengths [B], target_in [B, T],
            target_lengths [B], and optionally sampling_probability (scalar) and seed (int32 [2]).
            With a positive sampling probability the projection runs inside the decoder loop and
            the result is logits instead.
          training: enables dropout.
        """
        seed = inputs.get("seed", tf.constant([0, 0], tf.int32))
        memory, _ = self.encoder(
            inputs["source_ids"], inputs["source_lengths"], seed, training=training
        )
        batch = tf.shape(inputs["source_ids"])[0]
        initial_state = self._setup_attention(memory, inputs["source_lengths"], batch)
        target_in = inputs["target_in"]
        embedded = self.target_embedding(target_in)
        embedded = layers.stateless_dropout(
            embedded, self.cfg.dropout, layers.fold_seed(seed, 101), training
        )
        output_mask = tf.ones([batch, self.cfg.units], embedded.dtype)
        if training and self.cfg.dropout > 0.0:
            output_mask = layers.dropout_mask(
                [batch, self.cfg.units],
                self.cfg.dropout,
                layers.fold_seed(seed, 102),
                output_mask.dtype,
            )
        probability = inputs.get("sampling_probability")
        if probability is None and self.uses_fused_decoder():
            result = attention_decoder.luong_decode(
                embedded,
                inputs["source_lengths"],
                self.attention,
                self.attention_layer,
                self.decoder_cell,
            )
            return result * output_mask[:, None, :]
        if probability is None:
            sampler, output_layer = tfa_lib.TrainingSampler(), None
        else:
            sampler = sampling.DenseScheduledSampler(
                self.target_embedding, probability, layers.fold_seed(seed, 103)
            )
            output_layer = layers.MaskedProjection(self.projection, output_mask)
        decoder = tfa_lib.BasicDecoder(
            self.attention_cell,
            sampler,
            output_layer=output_layer,
            maximum_iterations=tf.shape(target_in)[1],
        )
        outputs, _, _ = decoder(
            embedded,
            initial_state=initial_state,
            sequence_length=inputs["target_lengths"],
            training=training,
        )
        result = outputs.rnn_output
        # dynamic_decode stops at the longest target; pad back to the static target length.
        pad = tf.shape(target_in)[1] - tf.shape(result)[1]
        result = tf.pad(result, [[0, 0], [0, pad], [0, 0]])
        if probability is None:
            result *= output_mask[:, None, :]
        return result

    def _encode_for_decoding(self, source_ids, source_lengths, multiplier, alignment_history):
        memory, _ = self.encoder(source_ids, source_lengths, tf.constant([0, 0], tf.int32))
        memory = tfa_lib.tile_batch(memory, multiplier)
        lengths = tfa_lib.tile_batch(source_lengths, multiplier)
        batch = tf.shape(source_ids)[0] * multiplier
        return self._setup_attention(memory, lengths, batch, alignment_history)

    def greedy_decode(self, source_ids, source_lengths, max_length=None, alignment_history=False):
        """Greedy translation: (ids [B, T], lengths [B], final decoder state).

        Runs `beam_search.greedy_decode` (no decoder state: None) where `decoder_step` covers
        the model and no alignment history is asked for; else TFA's decoder.
        """
        if decoder_step.supports(self.cfg) and not alignment_history:
            max_length = max_length or self.cfg.max_decode_length
            return (*beam_search.greedy_decode(self, source_ids, source_lengths, max_length), None)
        initial_state = self._encode_for_decoding(source_ids, source_lengths, 1, alignment_history)
        batch = tf.shape(source_ids)[0]
        decoder = tfa_lib.BasicDecoder(
            self._cell(alignment_history),
            tfa_lib.GreedyEmbeddingSampler(self.target_embedding),
            output_layer=self.projection,
            maximum_iterations=max_length or self.cfg.max_decode_length,
        )
        outputs, state, lengths = decoder(
            None,
            start_tokens=tf.fill([batch], vocab_lib.BOS_ID),
            end_token=vocab_lib.EOS_ID,
            initial_state=initial_state,
        )
        return outputs.sample_id, lengths, state

    def beam_search(
        self,
        source_ids,
        source_lengths,
        beam_width=None,
        length_penalty=None,
        coverage_penalty=None,
        max_length=None,
    ):
        """Beam search: (ids [B, beam, T], scores [B, beam], lengths [B, beam]), best first.

        Runs `beam_search.beam_search` where `decoder_step` covers the model, else TFA's.
        """
        cfg = self.cfg
        beam_width = beam_width or cfg.beam_width
        length_penalty = cfg.length_penalty if length_penalty is None else length_penalty
        coverage_penalty = cfg.coverage_penalty if coverage_penalty is None else coverage_penalty
        max_length = max_length or cfg.max_decode_length
        options = (beam_width, length_penalty, coverage_penalty, max_length)
        if decoder_step.supports(cfg):
            return beam_search.beam_search(self, source_ids, source_lengths, *options)
        return self.tfa_beam_search(source_ids, source_lengths, *options)

    def tfa_beam_search(
        self, source_ids, source_lengths, beam_width, length_penalty, coverage_penalty, max_length
    ):
        """TFA's `BeamSearchDecoder` (the reference `beam_search.beam_search` is tested against)."""
        initial_state = self._encode_for_decoding(source_ids, source_lengths, beam_width, False)
        batch = tf.shape(source_ids)[0]
        decoder = tfa_lib.BeamSearchDecoder(
            self.attention_cell,
            beam_width,
            embedding_fn=self.target_embedding,
            output_layer=self.projection,
            length_penalty_weight=length_penalty,
            coverage_penalty_weight=coverage_penalty,
            maximum_iterations=max_length,
        )
        outputs, state, lengths = decoder(
            None,
            start_tokens=tf.fill([batch], vocab_lib.BOS_ID),
            end_token=vocab_lib.EOS_ID,
            initial_state=initial_state,
        )
        ids = tf.transpose(outputs.predicted_ids, [0, 2, 1])
        scores = outputs.beam_search_decoder_output.scores[:, -1, :]
        return ids, scores, lengths
