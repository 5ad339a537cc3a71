"""The deep attention seq2seq: training forward pass, greedy decoding and beam search.

`Seq2Seq` works on padded id batches; tokenization and BOS/EOS handling live in the input
pipeline and the export module. Attention is TFA's `AttentionWrapper` over the top encoder layer
with input feeding; decoding runs `beam_search` over `decoder_step` where that covers the model,
else TFA's `BasicDecoder` and `BeamSearchDecoder`.
"""

from typing import NamedTuple

import tensorflow as tf

from pipeline import config as config_lib
from pipeline import vocab as vocab_lib
from trainer import attention_decoder, beam_search, decoder_step, layers, sampling, tfa_lib


class DecoderStart(NamedTuple):
    """What every teacher-forced decoder pass over one batch starts from (`Seq2Seq.encode`)."""

    initial_state: tfa_lib.AttentionWrapperState  # the attention points at this batch's memory
    source_lengths: tf.Tensor  # [B]
    output_mask: tf.Tensor  # [B, units]: dropout on the decoder outputs (ones without)
    seed: tf.Tensor  # int32 [2]: the step's seed, for the decoder's dropout


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
        # `weight_norm` wraps only this layer. On the output projection it cut test BLEU to a third
        # at 1,400 steps (README, *Weight normalisation*): each vocabulary row's length is then one
        # g, which Adam moves by about the learning rate per step, where a plain row's length
        # grows through all its `units` weights, so the softmax stays too flat for too long.
        self.attention_layer = layers.build_dense(
            cfg.units, cfg.weight_norm, "attention_layer", use_bias=False
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
        """Teacher-forced decoder outputs [B, T, units] (no projection; see `projection`).

        Args:
          inputs: dict with source_ids [B, S], source_lengths [B], target_in [B, T],
            target_lengths [B], and optionally sampling_probability (scalar) and seed (int32 [2]).
            With a sampling probability the decoder runs sequential scheduled sampling
            (`decode_sequential_sampling`): the result is logits [B, T, V] instead.
          training: enables dropout.
        """
        start = self.encode(inputs, training)
        probability = inputs.get("sampling_probability")
        target_in, target_lengths = inputs["target_in"], inputs["target_lengths"]
        if probability is None:
            return self.decode(start, target_in, target_lengths, training)
        return self.decode_sequential_sampling(
            start, target_in, target_lengths, probability, training
        )

    def encode(self, inputs, training: bool) -> DecoderStart:
        """Runs the encoder and points the attention at its memory (see `call` for `inputs`).

        Every decoder pass over this batch starts from the result, until the next `encode`.
        """
        seed = inputs.get("seed", tf.constant([0, 0], tf.int32))
        source_lengths = inputs["source_lengths"]
        memory, _ = self.encoder(inputs["source_ids"], source_lengths, seed, training=training)
        batch = tf.shape(inputs["source_ids"])[0]
        initial_state = self._setup_attention(memory, source_lengths, batch)
        output_mask = tf.ones([batch, self.cfg.units], memory.dtype)
        if training and self.cfg.dropout > 0.0:
            output_mask = layers.dropout_mask(
                [batch, self.cfg.units],
                self.cfg.dropout,
                layers.fold_seed(seed, 102),
                output_mask.dtype,
            )
        return DecoderStart(initial_state, source_lengths, output_mask, seed)

    def _embed_targets(self, start: DecoderStart, target_in, training: bool):
        embedded = self.target_embedding(target_in)
        return layers.stateless_dropout(
            embedded, self.cfg.dropout, layers.fold_seed(start.seed, 101), training
        )

    def decode(self, start: DecoderStart, target_in, target_lengths, training, trainable=True):
        """Teacher-forced decoder outputs [B, T, units] for inputs `target_in` [B, T].

        Args:
          start: this batch's `encode` result.
          target_in, target_lengths: the fed ids (BOS first) and the real lengths.
          training: enables dropout.
          trainable: False gives outputs without a gradient, computed without keeping
            anything for a backward pass (the first pass of parallel scheduled sampling).
        """
        embedded = self._embed_targets(start, target_in, training)
        if self.uses_fused_decoder():
            result = attention_decoder.luong_decode(
                embedded,
                start.source_lengths,
                self.attention,
                self.attention_layer,
                self.decoder_cell,
                trainable=trainable,
            )
            return result * start.output_mask[:, None, :]
        result = self._tfa_decode(
            start, embedded, target_lengths, tfa_lib.TrainingSampler(), None, training
        )
        result *= start.output_mask[:, None, :]
        return result if trainable else tf.stop_gradient(result)

    def decode_sequential_sampling(
        self, start: DecoderStart, target_in, target_lengths, probability, training
    ):
        """Logits [B, T, V] of TFA's decoder loop feeding back its own samples (Bengio et al.,
        2015): at each step, with `probability`, a draw from the previous step's softmax."""
        embedded = self._embed_targets(start, target_in, training)
        sampler = sampling.DenseScheduledSampler(
            self.target_embedding, probability, layers.fold_seed(start.seed, 103)
        )
        output_layer = layers.MaskedProjection(self.projection, start.output_mask)
        return self._tfa_decode(start, embedded, target_lengths, sampler, output_layer, training)

    def _tfa_decode(self, start, embedded, target_lengths, sampler, output_layer, training):
        decoder = tfa_lib.BasicDecoder(
            self.attention_cell,
            sampler,
            output_layer=output_layer,
            maximum_iterations=tf.shape(embedded)[1],
        )
        outputs, _, _ = decoder(
            embedded,
            initial_state=start.initial_state,
            sequence_length=target_lengths,
            training=training,
        )
        result = outputs.rnn_output
        # dynamic_decode stops at the longest target; pad back to the static target length.
        pad = tf.shape(embedded)[1] - tf.shape(result)[1]
        return tf.pad(result, [[0, 0], [0, pad], [0, 0]])

    def _encode_for_decoding(self, source_ids, source_lengths, multiplier, alignment_history):
        memory, _ = self.encoder(source_ids, source_lengths, tf.constant([0, 0], tf.int32))
        memory = tfa_lib.tile_batch(memory, multiplier)
        lengths = tfa_lib.tile_batch(source_lengths, multiplier)
        batch = tf.shape(source_ids)[0] * multiplier
        return self._setup_attention(memory, lengths, batch, alignment_history)

    def greedy_decode(self, source_ids, source_lengths, max_length=None, alignment_history=False):
        """Greedy translation: (ids [B, T], lengths [B], final decoder state).

        Runs `beam_search.greedy_decode` (no decoder state: None) where `decoder_step` covers
        the model and no alignment history is asked for, `cfg.decode_slots` sentences at once;
        else TFA's decoder.
        """
        if decoder_step.supports(self.cfg) and not alignment_history:
            max_length = max_length or self.cfg.max_decode_length
            ids, lengths, _ = beam_search.greedy_decode(
                self, source_ids, source_lengths, max_length, slots=self.cfg.decode_slots
            )
            return ids, lengths, None
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

        Runs `beam_search.beam_search` where `decoder_step` covers the model (at most
        `cfg.decode_slots` sentences at once, the rest waiting for one to end), else TFA's. A
        width of 1 is greedy search there, as in OpenNMT-tf: the argmax at every step, scored
        as a beam would be (log-probability over the length penalty). Beam search of width 1
        differs from it only where the length penalty makes EOS lose to a less likely token;
        with a coverage penalty width 1 stays beam search, whose score needs the attention.
        """
        cfg = self.cfg
        beam_width = beam_width or cfg.beam_width
        length_penalty = cfg.length_penalty if length_penalty is None else length_penalty
        coverage_penalty = cfg.coverage_penalty if coverage_penalty is None else coverage_penalty
        max_length = max_length or cfg.max_decode_length
        options = (beam_width, length_penalty, coverage_penalty, max_length)
        if decoder_step.supports(cfg) and beam_width == 1 and not coverage_penalty:
            ids, lengths, log_probs = beam_search.greedy_decode(
                self, source_ids, source_lengths, max_length, True, cfg.decode_slots
            )
            scores = log_probs / beam_search.length_penalty(lengths, length_penalty)
            return ids[:, None], scores[:, None], lengths[:, None]
        if decoder_step.supports(cfg):
            return beam_search.beam_search(
                self, source_ids, source_lengths, *options, slots=cfg.decode_slots
            )
        return self.tfa_beam_search(source_ids, source_lengths, *options)

    def tfa_beam_search(
        self,
        source_ids,
        source_lengths,
        beam_width,
        length_penalty,
        coverage_penalty,
        max_length,
        to_max_length=False,
    ):
        """TFA's `BeamSearchDecoder` (the reference `beam_search.beam_search` is tested against).

        The same contract as `beam_search`; the ids are backtracked from the last step, not as
        TFA's `finalize` does (`_ids_in_final_order`). With `to_max_length` it runs `max_length`
        steps, so that it ranks every sentence's hypotheses once more after they end, as
        `beam_search` does (`tfa_lib.BeamSearchToMaxLength`).
        """
        initial_state = self._encode_for_decoding(source_ids, source_lengths, beam_width, False)
        batch = tf.shape(source_ids)[0]
        search = tfa_lib.BeamSearchToMaxLength if to_max_length else tfa_lib.BeamSearchDecoder
        decoder = search(
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
        steps = outputs.beam_search_decoder_output
        return _ids_in_final_order(steps, batch), steps.scores[:, -1, :], lengths


def _ids_in_final_order(steps, batch):
    """TFA's hypotheses [B, beam, T] in the order of the scores and lengths it returns.

    TFA's `finalize` backtracks each sentence from its longest hypothesis' length, so the step
    after that, which ranks the sentence's finished hypotheses once more by their final scores
    (with EOS in their length, and the coverage penalty), reorders the scores and lengths but
    not `predicted_ids`: the best score would come with another hypothesis' ids (4% of a
    trained model's test sentences, `bench/decode.py`). Backtracking every sentence from the
    last step keeps the three together.
    """
    time_major = [1, 0, 2]
    ids = tfa_lib.gather_tree(
        tf.transpose(steps.predicted_ids, time_major),
        tf.transpose(steps.parent_ids, time_major),
        tf.fill([batch], tf.shape(steps.predicted_ids)[1]),
        vocab_lib.EOS_ID,
    )
    return tf.transpose(ids, [1, 2, 0])
