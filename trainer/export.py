"""Export: a SavedModel that translates raw strings, needing only TensorFlow and TF Text to load.

Normalisation, tokenization, beam search and detokenization are all in the graph, so a serving
system feeds sentences and gets sentences. The signature is fixed by `SIGNATURE_KEYS`.
"""

import json
import os

import tensorflow as tf

from pipeline import features, text
from pipeline import vocab as vocab_lib
from trainer import data

SERVING_SIGNATURE = "serving_default"
# Raw strings -> their length in source pieces, so a client can sort its input as the model
# will pad it (`serving.length_order`).
LENGTHS_SIGNATURE = "source_lengths"
SIGNATURE_KEYS = ("translations", "scores", "nbest")
EXPORT_INFO = "export_info.json"


class Translator(tf.Module):
    """Raw source strings [batch] -> translations [batch], scores [batch], n-best [batch, beam]."""

    def __init__(self, seq2seq, source_tokens, target_tokens, max_source_length, decode_options):
        super().__init__(name="translator")
        # Hold the weights, not the Keras model: saving a Keras model would also trace every
        # layer's call, and the attention wrapper's call cannot be traced apart from its memory.
        self.model_variables = list(seq2seq.variables)
        self._beam_search = seq2seq.beam_search
        self.source_tokenizer = text.SubwordTokenizer(source_tokens, name="source_tokenizer")
        self.target_tokenizer = text.SubwordTokenizer(target_tokens, name="target_tokenizer")
        self.max_source_length = max_source_length
        self.decode_options = decode_options

    def _pieces(self, sources):
        """Raw strings -> the source pieces the model reads, ragged [batch, pieces]."""
        normalized = text.normalize_in_graph(sources)
        return self.source_tokenizer.tokenize(normalized)[:, : self.max_source_length]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sources")])
    def source_lengths(self, sources):
        return {"lengths": tf.cast(self._pieces(sources).row_lengths(), tf.int32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sources")])
    def translate(self, sources):
        source_ids, source_lengths = data.source_batch(self._pieces(sources))
        ids, scores, lengths = self._beam_search(source_ids, source_lengths, **self.decode_options)
        beam = tf.shape(ids)[1]
        flat = tf.reshape(ids, [-1, tf.shape(ids)[2]])
        flat_lengths = tf.reshape(lengths, [-1])
        keep = tf.logical_and(
            tf.sequence_mask(flat_lengths, tf.shape(flat)[1]),
            tf.logical_and(flat != vocab_lib.EOS_ID, flat != vocab_lib.PAD_ID),
        )
        hypotheses = tf.ragged.boolean_mask(flat, keep)
        strings = tf.reshape(self.target_tokenizer.detokenize(hypotheses), [-1, beam])
        return {"translations": strings[:, 0], "scores": scores[:, 0], "nbest": strings}


def export_saved_model(
    trainer,
    export_dir: str,
    beam_width=None,
    length_penalty=None,
    coverage_penalty=None,
    precision: str = "",
) -> str:
    """Writes the SavedModel of the trainer's current weights to `export_dir`; unset options
    are the config's (`precision`: `model.export_precision`)."""
    model_cfg = trainer.cfg.model
    precision = precision or model_cfg.export_precision
    options = {
        "beam_width": beam_width or model_cfg.beam_width,
        "length_penalty": model_cfg.length_penalty if length_penalty is None else length_penalty,
        "coverage_penalty": (
            model_cfg.coverage_penalty if coverage_penalty is None else coverage_penalty
        ),
    }
    translator = Translator(
        trainer.export_model(precision),
        trainer.source_tokens,
        trainer.target_tokens,
        trainer.cfg.data.max_length,
        options,
    )
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    signatures = {
        SERVING_SIGNATURE: translator.translate,
        LENGTHS_SIGNATURE: translator.source_lengths,
    }
    tf.saved_model.save(translator, export_dir, signatures=signatures)
    info = {
        "schema_version": features.SCHEMA_VERSION,
        "step": trainer.step,
        "decode_options": options,
        "decode_slots": model_cfg.decode_slots,
        "precision": precision,
        "vocab_fingerprints": trainer.metadata["vocab"],
        "signature": SERVING_SIGNATURE,
        "outputs": list(SIGNATURE_KEYS),
    }
    with tf.io.gfile.GFile(os.path.join(export_dir, EXPORT_INFO), "w") as f:
        json.dump(info, f, indent=2)
    return export_dir
