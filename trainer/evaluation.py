"""Dev loss, perplexity and BLEU/chrF (sacrebleu) on beam-search output.

Decoding turns ids back into text with the target tokenizer, so scores are on detokenized text,
comparable with any other system scored by sacrebleu.
"""

import math

import numpy as np
import sacrebleu
import tensorflow as tf

from pipeline import features
from pipeline import vocab as vocab_lib
from trainer import data


def strip_after_eos(ids: np.ndarray) -> list[int]:
    """Ids up to (not including) the first EOS, without padding."""
    out = []
    for token in ids.tolist():
        if token == vocab_lib.EOS_ID:
            break
        if token != vocab_lib.PAD_ID:
            out.append(token)
    return out


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """BLEU and chrF with their sacrebleu signatures."""
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(bleu_score.score, 2),
        "chrf": round(chrf_score.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hypotheses),
    }


class Evaluator:
    """Computes dev loss with the training model and translation quality with `decoding_model`.

    The two differ under mixed precision (`Trainer.decoding_model` is a float32 twin whose
    weights the trainer refreshes before each evaluation).
    """

    def __init__(self, task, decoding_model, target_tokenizer, data_cfg):
        self.task = task
        self.model = decoding_model
        self.target_tokenizer = target_tokenizer
        self.data_cfg = data_cfg
        # One trace for every batch shape: eval batches are padded to their longest pair.
        self._loss_fn = tf.function(self._batch_loss, reduce_retracing=True)
        ids = tf.TensorSpec([None, None], tf.int32)
        self._beam_fn = tf.function(
            self._beam, input_signature=[ids, tf.TensorSpec([None], tf.int32)]
        )

    def _batch_loss(self, batch):
        _, tokens, nll = self.task.loss(batch, tf.constant(0, tf.int64), training=False)
        return nll, tokens

    def _beam(self, source_ids, source_lengths):
        ids, _, _ = self.model.beam_search(source_ids, source_lengths)
        return ids[:, 0, :]

    def loss(self, split: str = "dev") -> dict:
        """Mean token NLL and perplexity over the whole split."""
        total, tokens = 0.0, 0.0
        for batch in data.make_eval_dataset(self.data_cfg, split):
            nll, count = self._loss_fn(batch)
            total += float(nll)
            tokens += float(count)
        mean = total / max(tokens, 1.0)
        return {"loss": mean, "perplexity": math.exp(min(mean, 50.0))}

    def translate_split(
        self, split: str, limit: int = -1
    ) -> tuple[list[str], list[str], list[str]]:
        """(sources, hypotheses, references) for the first `limit` pairs of `split`."""
        sources, hypotheses, references = [], [], []
        for batch in data.make_eval_dataset(self.data_cfg, split, limit, with_text=True):
            ids = self._beam_fn(batch[data.SOURCE_IDS], batch[data.SOURCE_LENGTHS]).numpy()
            pieces = tf.ragged.constant([strip_after_eos(row) for row in ids], dtype=tf.int32)
            texts = self.target_tokenizer.detokenize(pieces).numpy()
            hypotheses += [t.decode("utf-8") for t in texts]
            sources += [t.decode("utf-8") for t in batch[features.SOURCE_TEXT].numpy()]
            references += [t.decode("utf-8") for t in batch[features.TARGET_TEXT].numpy()]
        return sources, hypotheses, references

    def quality(self, split: str = "dev", limit: int = -1) -> dict:
        sources, hypotheses, references = self.translate_split(split, limit)
        result = corpus_scores(hypotheses, references)
        result["samples"] = [
            {"source": s, "hypothesis": h, "reference": r}
            for s, h, r in list(zip(sources, hypotheses, references, strict=True))[:3]
        ]
        return result
