"""Export: a SavedModel that translates raw strings, needing only TensorFlow and TF Text to load.

Normalisation, tokenization, beam search and detokenization are all in the graph, so a serving
system feeds sentences and gets sentences. The signature is fixed by `SIGNATURE_KEYS`.

By default (`model.export_precision=auto`) one export serves any host at its speed:
`serving_default` searches with float32 products (full speed everywhere) and, where the fused
search covers the model, `serving_bfloat16` with bfloat16 ones (1.24x the greedy and 1.27x the
beam 4 sentences/s on the EPYC-BF16 host, README; emulated and slower where bfloat16 is not
native); `trainer.serving` picks between them for the host it runs on. Both read the same
float32 weights, saved once.
"""

import json
import os

import tensorflow as tf

from pipeline import features, text
from pipeline import vocab as vocab_lib
from trainer import data, decoder_step, precision

SERVING_SIGNATURE = "serving_default"
# The search with bfloat16 matrix products, beside a float32 `serving_default`.
BFLOAT16_SIGNATURE = "serving_bfloat16"
# Raw strings -> their length in source pieces, so a client can sort its input as the model
# will pad it (`serving.length_order`).
LENGTHS_SIGNATURE = "source_lengths"
SIGNATURE_KEYS = ("translations", "scores", "nbest")
EXPORT_INFO = "export_info.json"


class Translator(tf.Module):
    """Raw source strings [batch] -> translations [batch], scores [batch], n-best [batch, beam];
    one `tf.function` per search model, sharing the tokenizers."""

    def __init__(self, searches, source_tokens, target_tokens, max_source_length, decode_options):
        """`searches`: signature name -> the model whose search that signature runs."""
        super().__init__(name="translator")
        # Hold the weights, not the Keras models: saving a Keras model would also trace every
        # layer's call, and the attention wrapper's call cannot be traced apart from its memory.
        # The searches share their weights (a bfloat16 model's wrap the float32 one's), so
        # each is held once: by its first holder, whose resource the functions capture.
        weights = {}
        for seq2seq in searches.values():
            for variable in seq2seq.variables:
                weights.setdefault(id(variable.handle), variable)
        self.model_variables = list(weights.values())
        self.source_tokenizer = text.SubwordTokenizer(source_tokens, name="source_tokenizer")
        self.target_tokenizer = text.SubwordTokenizer(target_tokens, name="target_tokenizer")
        self.max_source_length = max_source_length
        self.decode_options = decode_options
        self.translations = {
            name: self._translating(seq2seq.beam_search) for name, seq2seq in searches.items()
        }

    def _pieces(self, sources):
        """Raw strings -> the source pieces the model reads, ragged [batch, pieces]."""
        normalized = text.normalize_in_graph(sources)
        return self.source_tokenizer.tokenize(normalized)[:, : self.max_source_length]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sources")])
    def source_lengths(self, sources):
        return {"lengths": tf.cast(self._pieces(sources).row_lengths(), tf.int32)}

    def _translating(self, search):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="sources")])
        def translate(sources):
            source_ids, source_lengths = data.source_batch(self._pieces(sources))
            ids, scores, lengths = search(source_ids, source_lengths, **self.decode_options)
            strings = self._strings(ids, lengths)
            return {"translations": strings[:, 0], "scores": scores[:, 0], "nbest": strings}

        return translate

    def _strings(self, ids, lengths):
        """ids [batch, beam, T] and lengths [batch, beam] -> hypotheses [batch, beam]."""
        beam = tf.shape(ids)[1]
        flat = tf.reshape(ids, [-1, tf.shape(ids)[2]])
        flat_lengths = tf.reshape(lengths, [-1])
        keep = tf.logical_and(
            tf.sequence_mask(flat_lengths, tf.shape(flat)[1]),
            tf.logical_and(flat != vocab_lib.EOS_ID, flat != vocab_lib.PAD_ID),
        )
        hypotheses = tf.ragged.boolean_mask(flat, keep)
        return tf.reshape(self.target_tokenizer.detokenize(hypotheses), [-1, beam])


def signature_precisions(model_cfg, requested: str = "") -> dict:
    """Signature name -> the Keras policy its search runs in, for `model.export_precision`
    `requested` (default the config's): 'auto' gives float32 `serving_default` and, where the
    fused search covers the model, bfloat16 `serving_bfloat16`; a policy gives
    `serving_default` alone in it."""
    requested = requested or model_cfg.export_precision
    if requested != precision.AUTO:
        return {SERVING_SIGNATURE: requested}
    if not decoder_step.supports(model_cfg):  # TFA's decoders would keep scores in bfloat16
        return {SERVING_SIGNATURE: precision.FLOAT32}
    return {SERVING_SIGNATURE: precision.FLOAT32, BFLOAT16_SIGNATURE: precision.BFLOAT16}


def export_saved_model(
    trainer,
    export_dir: str,
    beam_width=None,
    length_penalty=None,
    coverage_penalty=None,
    products: str = "",
) -> str:
    """Writes the SavedModel of the trainer's current weights to `export_dir`; unset options
    are the config's (`products`: `model.export_precision`, see `signature_precisions`)."""
    model_cfg = trainer.cfg.model
    precisions = signature_precisions(model_cfg, products)
    options = {
        "beam_width": beam_width or model_cfg.beam_width,
        "length_penalty": model_cfg.length_penalty if length_penalty is None else length_penalty,
        "coverage_penalty": (
            model_cfg.coverage_penalty if coverage_penalty is None else coverage_penalty
        ),
    }
    translator = Translator(
        {name: trainer.export_model(policy) for name, policy in precisions.items()},
        trainer.source_tokens,
        trainer.target_tokens,
        trainer.cfg.data.max_length,
        options,
    )
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    signatures = {LENGTHS_SIGNATURE: translator.source_lengths, **translator.translations}
    tf.saved_model.save(translator, export_dir, signatures=signatures)
    info = {
        "schema_version": features.SCHEMA_VERSION,
        "step": trainer.step,
        "decode_options": options,
        "decode_slots": model_cfg.decode_slots,
        "precision": precisions[SERVING_SIGNATURE],
        "signature_precisions": precisions,
        "vocab_fingerprints": trainer.metadata["vocab"],
        "signature": SERVING_SIGNATURE,
        "outputs": list(SIGNATURE_KEYS),
    }
    with tf.io.gfile.GFile(os.path.join(export_dir, EXPORT_INFO), "w") as f:
        json.dump(info, f, indent=2)
    return export_dir
