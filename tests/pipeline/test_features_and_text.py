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


def test_split_words_matches_wordpiece_pretokenization():
    assert text.split_words("Hello, world (x)!") == [
        "Hello",
        ",",
        "\u2581world",
        "\u2581",
        "(",
        "x",
        ")",
        "!",
    ]


def _tokenizer_for(sentences):
    words = sorted({w for s in sentences for w in text.split_words(s)})
    chars = sorted({c for s in sentences for c in s.replace(" ", text.SPACE_MARK)})
    tokens = list(vocab_lib.RESERVED_TOKENS) + words
    tokens += [c for c in chars if c not in tokens] + ["##" + c for c in chars]
    return text.SubwordTokenizer(tokens)


def test_tokenize_detokenize_is_lossless():
    sentences = ["Press Ctrl+Enter (or F2).", "Die Summe: 3,5 %; fertig!", "a  b"]
    normalized = [text.normalize(s) for s in sentences]
    tokenizer = _tokenizer_for(normalized)
    ids = tokenizer.tokenize(tf.constant(normalized))
    assert vocab_lib.UNK_ID not in ids.flat_values.numpy().tolist()
    back = [b.decode() for b in tokenizer.detokenize(ids).numpy()]
    assert back == normalized


def test_vocabulary_file_checks_reserved_tokens(tmp_path):
    path = str(tmp_path / "v.txt")
    tokens = list(vocab_lib.RESERVED_TOKENS) + ["a", "##b"]
    vocab_lib.write_vocabulary(path, tokens)
    assert vocab_lib.load_vocabulary(path) == tokens
    (tmp_path / "bad.txt").write_text("a\n[PAD]\n")
    try:
        vocab_lib.load_vocabulary(str(tmp_path / "bad.txt"))
    except vocab_lib.VocabularyError as e:
        assert "must start with" in str(e)
    else:
        raise AssertionError("a vocabulary without reserved tokens first was accepted")
    assert vocab_lib.fingerprint(tokens) != vocab_lib.fingerprint(tokens[:-1] + ["##c"])
