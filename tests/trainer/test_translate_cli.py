"""The nmt-translate CLI and saved_model_cli on an exported model, each in a fresh process.

The model is the tiny config's untrained weights: these tests are about the tool's inputs,
outputs and errors, not about translation quality.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from pipeline import paths, text
from pipeline import vocab as vocab_lib
from tests import dataset_fixture
from trainer import export, serving

SENTENCES = ["Click OK.", "Select a cell in the table.", "Open the file."]


@pytest.fixture(scope="module")
def export_dir(tiny_export):
    """The session's untrained tiny export (tests/conftest.py); tests copy it to change it."""
    return tiny_export


def _translate(*args, stdin=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "trainer.translate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd or dataset_fixture.REPO,
    )


@pytest.fixture(scope="module")
def from_args(export_dir):
    result = _translate(f"--model={export_dir}", *SENTENCES)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_sentences_from_arguments_one_translation_per_line(from_args):
    assert len(from_args) == len(SENTENCES)
    assert all("\t" not in line for line in from_args)


def test_input_file_to_output_file(export_dir, from_args, tmp_path):
    source, output = tmp_path / "source.txt", tmp_path / "out" / "translations.txt"
    source.write_text("".join(s + "\n" for s in SENTENCES), encoding="utf-8")
    output.parent.mkdir()
    result = _translate(f"--model={export_dir}", f"--input={source}", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    assert output.read_text(encoding="utf-8").splitlines() == from_args


def test_stdin_with_two_best_hypotheses_tab_separated(export_dir, from_args):
    stdin = "".join(s + "\n" for s in SENTENCES)
    result = _translate(f"--model={export_dir}", "--input=-", "--n_best=2", stdin=stdin)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [len(row) for row in rows] == [2] * len(SENTENCES)
    assert [row[0] for row in rows] == from_args


def test_empty_input_is_refused(export_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for args, stdin in (([f"--input={empty}"], None), (["--input=-"], "")):
        result = _translate(f"--model={export_dir}", *args, stdin=stdin)
        assert result.returncode != 0
        assert "Nothing to translate" in result.stderr, args


def test_missing_model_directory_is_refused(tmp_path):
    missing = tmp_path / "no_such_export"
    result = _translate(f"--model={missing}", "Click OK.")
    assert result.returncode != 0
    assert f"{missing} is not an exported model (no saved_model.pb)" in result.stderr


def test_model_of_another_schema_version_is_refused(export_dir, tmp_path):
    copy = tmp_path / "export_v99"
    shutil.copytree(export_dir, copy)
    info_path = copy / export.EXPORT_INFO
    info = json.loads(info_path.read_text())
    info["schema_version"] = 99
    info_path.write_text(json.dumps(info))
    result = _translate(f"--model={copy}", "Click OK.")
    assert result.returncode != 0
    assert "was exported with schema version 99" in result.stderr
    assert "Re-export the model" in result.stderr


def test_precision_flag_picks_the_search(export_dir, from_args, tmp_path):
    """Both searches of the default export translate; an export from before the bfloat16
    signature (its info names one policy) has none to give, and says so."""
    for products in ("float32", "bfloat16"):
        result = _translate(f"--model={export_dir}", f"--precision={products}", *SENTENCES)
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(result.stdout.splitlines()) == len(SENTENCES)
    older = tmp_path / "export_float32_only"
    shutil.copytree(export_dir, older)
    info_path = older / export.EXPORT_INFO
    info = json.loads(info_path.read_text())
    del info["signature_precisions"]
    info_path.write_text(json.dumps(info))
    result = _translate(f"--model={older}", "--precision=bfloat16", "Click OK.")
    assert result.returncode != 0
    assert f"{older}: the export has no bfloat16 search (it has: float32)" in result.stderr
    result = _translate(f"--model={older}", "Click OK.")
    assert result.returncode == 0, result.stderr[-3000:]


def test_saved_model_cli_shows_and_runs_the_signature(export_dir, from_args, tmp_path):
    """`show` needs nothing else; `run` needs TF Text's ops registered in its process.

    saved_model_cli has no flag to load op libraries, so `run` is its own main() after
    `import tensorflow_text` (TF Serving's model server already links TF Text's ops).
    """
    binary = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    show = subprocess.run(
        [binary, "show", "--dir", export_dir, "--tag_set", "serve"]
        + ["--signature_def", "serving_default"],
        capture_output=True,
        text=True,
    )
    assert show.returncode == 0, show.stderr[-3000:]
    for key in ("inputs['sources']", "outputs['translations']", "outputs['nbest']"):
        assert key in show.stdout
    script = (
        "import sys\n"
        "import tensorflow_text  # registers the tokenizer ops\n"
        "from tensorflow.python.tools import saved_model_cli\n"
        "sys.argv[0] = 'saved_model_cli'\n"
        "saved_model_cli.main()\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, "run", "--dir", export_dir, "--tag_set", "serve"]
        + ["--signature_def", "serving_default", "--input_exprs", 'sources=["Click OK."]'],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Result for output key translations:" in run.stdout
    assert repr(from_args[0].encode("utf-8")) in run.stdout


def test_length_sorted_batches_come_back_in_input_order(export_dir):
    """Sentences of mixed lengths, batched after sorting: each gets what it gets alone."""
    translator = serving.load_translator(export_dir)
    sentences = [SENTENCES[1], "OK.", SENTENCES[0] * 3, SENTENCES[2], "Cell"]
    batched = serving.translate(translator, sentences, batch_size=2, n_best=2)
    alone = [serving.translate(translator, [s], batch_size=1, n_best=2)[0] for s in sentences]
    assert [nbest for nbest, _ in batched] == [nbest for nbest, _ in alone]
    np.testing.assert_allclose([s for _, s in batched], [s for _, s in alone], atol=1e-4)
    assert len({round(s, 4) for _, s in alone}) == len(sentences), "scores tell sentences apart"


def test_the_tools_sort_by_the_pieces_the_export_counts(export_dir, small_dataset):
    """The export's `source_lengths` signature counts the pieces the model reads (a call pads to
    its longest in pieces); exports made before it fall back to characters."""
    translator = serving.load_translator(export_dir)
    # Few characters in many pieces, many characters in few: the two orders differ.
    sentences = ["Click OK. Click OK. Click OK.", "qxzvkjwfpq zzxq", "OK.", SENTENCES[1]]
    counted = translator.source_lengths(sources=tf.constant(sentences))["lengths"].numpy()
    layout = paths.DatasetLayout(small_dataset.root)
    tokenizer = text.SubwordTokenizer(vocab_lib.load_vocabulary(layout.vocabulary("source")))
    normalized = text.normalize_in_graph(tf.constant(sentences))
    np.testing.assert_array_equal(counted, tokenizer.tokenize(normalized).row_lengths())
    by_pieces = serving.length_order(sentences, translator.source_lengths)
    by_characters = serving.length_order(sentences)
    assert [counted[i] for i in by_pieces] == sorted(counted)
    assert [len(sentences[i]) for i in by_characters] == sorted(map(len, sentences))
    assert by_pieces != by_characters


def test_streams_change_the_speed_not_the_translations(export_dir):
    """Three batches decoded at once (threads) give, in input order, what one at a time gives."""
    translator = serving.load_translator(export_dir)
    sentences = [SENTENCES[1], "OK.", SENTENCES[0] * 3, SENTENCES[2], "Cell", "Open.", "Yes"]
    one = serving.translate(translator, sentences, batch_size=2, n_best=2, streams=1)
    three = serving.translate(translator, sentences, batch_size=2, n_best=2, streams=3)
    assert three == one


def test_in_streams_overlaps_decodes_and_keeps_their_order():
    """Plain Python, no model: slower first batches still come first; at most `streams` run at
    once and they do overlap; an error in a batch reaches the caller."""
    running, most = 0, 0
    lock = threading.Lock()

    def decode(batch):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05 * max(0, 6 - batch))
        with lock:
            running -= 1
        if batch == 99:
            raise ValueError("batch 99")
        return batch * 10

    assert list(serving.in_streams(decode, range(6), streams=2)) == [0, 10, 20, 30, 40, 50]
    assert most == 2
    with pytest.raises(ValueError, match="batch 99"):
        list(serving.in_streams(decode, [1, 99, 2], streams=2))


def _in_fresh_process(program: str) -> list[int]:
    """The integers a Python program prints, run in a fresh process (TensorFlow's threads are
    set once per process)."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, tensorflow as tf\nfrom trainer import serving\n" + program,
        ],
        capture_output=True,
        text=True,
        cwd=dataset_fixture.REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [int(word) for word in result.stdout.split()]


def test_streams_share_the_cores_before_tensorflow_starts():
    """Streams split the cores between them, never below one thread each; a job of one call
    keeps TensorFlow's default; once TensorFlow has run an op nothing changes, and the call
    says so by returning 0."""
    threads = "tf.config.threading.get_intra_op_parallelism_threads()"
    one_call, unchanged, many, two, set_to, cores = _in_fresh_process(
        f"a = serving.share_cores(2, calls=1)\nb = {threads}\n"
        f"c = serving.share_cores(10**6)\nd = serving.share_cores(2, calls=5)\n"
        f"print(a, b, c, d, {threads}, len(os.sched_getaffinity(0)))\n"
    )
    assert (one_call, unchanged) == (0, 0)  # 0: TensorFlow's own choice
    assert many == 1
    assert two == set_to == max(1, cores // 2)
    late, after = _in_fresh_process(f"tf.constant(1) + 1\nprint(serving.share_cores(2), {threads})")
    assert (late, after) == (0, 0)


def test_zero_streams_is_a_usage_error(export_dir):
    result = _translate(f"--model={export_dir}", "--streams=0", "OK.")
    assert result.returncode != 0
    assert "streams" in result.stderr and "Traceback" not in result.stderr


def test_export_runs_the_fused_beam_search_with_core_ops_only(export_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    nodes = [*graph.node, *(n for fn in graph.library.function for n in fn.node_def)]
    assert nodes
    assert not [n.op for n in nodes if n.op.startswith("Addons>")]
    assert not [n.name for n in nodes if "BeamSearchDecoder" in n.name], "TFA's decoder"
