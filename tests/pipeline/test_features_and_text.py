import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline import features, text
from pipeline import vocab as vocab_lib


def test_encode_then_parse_round_trips():
    serialized = features.encode_example([5, 6, 7], [8], "Grüße, Welt", "Hallo\tWelt")
    parsed = features.parse_example(tf.constant(serialized))
    assert parsed[features.SOURCE_IDS].numpy().tolist() == [5, 6, 7]
    assert parsed[features.TARGET_IDS].numpy().tolist() == [8]
    assert parsed[features.SOURCE_IDS].dtype == tf.int32
    assert parsed[features.SOURCE_TEXT].numpy().decode() == "Grüße, Welt"
    assert parsed[features.TARGET_TEXT].numpy().decode() == "Hallo\tWelt"


def test_normalize_composes_and_cleans():
    assert text.normalize("  Cafe\u0301\u00a0 au\tlait\u200b \x07") == "Café au lait"
    assert text.normalize("a\u2581b") == "a_b"


def test_in_graph_normalisation_matches_python():
    samples = ["  Cafe\u0301\u00a0 au\tlait  ", "Zeile\x07 eins", "ab\x07cd\u200b", "a\u2581b  c"]
    graph = text.normalize_in_graph(tf.constant(samples)).numpy()
    assert [g.decode() for g in graph] == [text.normalize(s) for s in samples]


def _vocabulary_for(sentences, size=200):
    from preprocessing import vocabulary

    counts = vocabulary.count_words(sentences)
    return vocabulary.learn_vocabulary(counts, vocabulary.VocabParams(size=size))


def test_tokenize_detokenize_is_lossless():
    sentences = ["Press Ctrl+Enter (or F2).", "Die Summe: 3,5 %; fertig!", "a  b", "Grüße"]
    normalized = [text.normalize(s) for s in sentences]
    tokenizer = text.SubwordTokenizer(_vocabulary_for(normalized))
    ids = tokenizer.tokenize(tf.constant(normalized))
    assert vocab_lib.UNK_ID not in ids.flat_values.numpy().tolist()
    back = [b.decode() for b in tokenizer.detokenize(ids).numpy()]
    assert back == normalized


def test_tokenizer_pieces_mark_spaces_and_unknown_characters_are_unk():
    vocabulary = _vocabulary_for(["open the file", "open the window"])
    tokenizer = text.SubwordTokenizer(vocabulary)
    ids = tokenizer.tokenize(tf.constant(["open the file", "open \u00f8"]))
    pieces = [p.decode() for p in tokenizer.ids_to_pieces(ids.flat_values).numpy()]
    assert pieces[0] == text.SPACE_MARK + "open"
    assert vocab_lib.UNK_ID in ids[1].numpy().tolist()
    assert tokenizer.vocab_size == len(vocabulary)


def test_vocabulary_file_round_trips_and_checks_reserved_tokens(tmp_path):
    vocabulary = _vocabulary_for(["open the file", "close the window"])
    path = str(tmp_path / "v.model")
    vocab_lib.write_vocabulary(path, vocabulary)
    assert vocab_lib.load_vocabulary(path) == vocabulary
    assert vocabulary.pieces[:4] == vocab_lib.RESERVED_TOKENS
    listing = (tmp_path / "v.vocab").read_text(encoding="utf-8").splitlines()
    assert tuple(listing) == vocabulary.pieces
    other = _vocabulary_for(["open the file", "close the door"])
    assert vocab_lib.fingerprint(other) != vocab_lib.fingerprint(vocabulary)
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(vocab_lib.VocabularyError, match="bad.model.*Not a SentencePiece model"):
        vocab_lib.load_vocabulary(str(tmp_path / "bad.model"))


def test_old_wordpiece_dataset_is_refused_with_a_rerun_hint(tmp_path):
    (tmp_path / "source.txt").write_text("[PAD]\n[UNK]\n[BOS]\n[EOS]\na\n", encoding="utf-8")
    with pytest.raises(vocab_lib.VocabularyError, match="WordPiece.*rerun nmt-preprocess"):
        vocab_lib.load_vocabulary(str(tmp_path / "source.model"))
    with pytest.raises(vocab_lib.VocabularyError, match="does not exist.$"):
        vocab_lib.load_vocabulary(str(tmp_path / "target.model"))


_FRESH_PROCESS = """
import json, sys
import tensorflow as tf, tensorflow_text
assert 'pipeline' not in sys.modules
loaded = tf.saved_model.load(sys.argv[1])
out = {}
for side in ('source', 'target'):
    ids = getattr(loaded, side)(tf.constant(json.loads(sys.argv[2])))
    out[side] = {
        'ids': ids.to_list(),
        'text': [t.decode('utf-8') for t in loaded.detokenize_target(ids).numpy()],
    }
print(json.dumps(out))
"""


class _Tokenizing(tf.Module):
    """Two tokenizers in one SavedModel, as the exported translator holds them."""

    def __init__(self, source, target):
        super().__init__()
        self.source_tokenizer = text.SubwordTokenizer(source)
        self.target_tokenizer = text.SubwordTokenizer(target)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def source(self, raw):
        return self.source_tokenizer.tokenize(text.normalize_in_graph(raw))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def target(self, raw):
        return self.target_tokenizer.tokenize(text.normalize_in_graph(raw))

    @tf.function(
        input_signature=[tf.RaggedTensorSpec([None, None], tf.int32, row_splits_dtype=tf.int64)]
    )
    def detokenize_target(self, ids):
        return self.target_tokenizer.detokenize(ids)


def test_saved_model_tokenizes_raw_strings_in_a_fresh_process(tmp_path):
    """The models travel inside the SavedModel: TF and TF Text alone tokenize raw text, each
    side with its own model (TF Text 2.15 once reloaded two same-named tokenizers as one)."""
    vocabularies = {
        "source": _vocabulary_for(["Open the file.", "Close the window, then open the file."]),
        "target": _vocabulary_for(["Öffnen Sie die Datei.", "Schließen Sie das Fenster im Café."]),
    }
    export_dir = str(tmp_path / "export")
    tf.saved_model.save(_Tokenizing(**vocabularies), export_dir)
    raw = ["  \u00d6ffnen\u00a0Sie   die Datei.", "Cafe\u0301 Fenster"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", "-c", _FRESH_PROCESS, export_dir, json.dumps(raw)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout)
    normalized = [text.normalize(s) for s in raw]
    for side, vocabulary in vocabularies.items():
        tokenizer = text.SubwordTokenizer(vocabulary)
        assert served[side]["ids"] == tokenizer.tokenize(tf.constant(normalized)).to_list()
    assert served["source"]["ids"] != served["target"]["ids"]
    assert served["target"]["text"] == ["Öffnen Sie die Datei.", "Café Fenster"]
