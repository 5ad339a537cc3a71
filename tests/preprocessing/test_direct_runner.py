"""The DirectRunner workaround: two worker processes receive every element the runner buffered.

Beam 2.77's FnApiRunner drops chunks of a bundle's input when its timer flush races the thread
that writes the input to a worker (`preprocessing/direct_runner.py`). At Beam's 1000 ms interval
that needs an input that takes over a second to write (a 1M-pair job); at 1 ms the same race
dropped 17-51% of this test's 64 MB in every one of six runs without the workaround. The test
sets 1 ms, applies the workaround, and checks by content that every element arrives.
"""

import os

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.options import pipeline_options
from apache_beam.runners.portability.fn_api_runner import execution, worker_handlers
from apache_beam.testing import util
from apache_beam.transforms import core, window

from preprocessing import direct_runner

_PRODUCERS, _PER_PRODUCER, _ELEMENT_BYTES = 16, 4096, 1000  # 64 MB in 10 MB chunks.


def _produce(producer: int):
    for index in range(_PER_PRODUCER):
        yield producer * _PER_PRODUCER + index, b"x" * _ELEMENT_BYTES


def _receive(element, unused_total):
    return element[0]


def _check_every_element_once(received):
    expected = _PRODUCERS * _PER_PRODUCER
    missing = expected - len(set(received))
    if missing or len(received) != expected:
        raise util.BeamAssertException(
            f"{len(received)} elements received for {expected} sent; {missing} missing."
        )


@pytest.mark.slow
def test_buffered_input_reaches_two_worker_processes_whole(monkeypatch):
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)
    direct_runner.avoid_lossy_flush_race()
    options = pipeline_options.PipelineOptions(
        ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    )
    with beam.Pipeline(options=options) as p:
        produced = (
            p
            | beam.Create(range(_PRODUCERS))
            | beam.Reshuffle()
            | "Produce" >> beam.FlatMap(_produce)
        )
        total = produced | beam.combiners.Count.Globally()
        # The side input, computed from `produced`, keeps the consumer out of the producer's
        # stage: the runner buffers `produced` and streams it to the workers.
        received = produced | "Receive" >> beam.Map(_receive, beam.pvalue.AsSingleton(total))
        util.assert_that(received, _check_every_element_once)


def test_large_freed_blocks_go_back_in_this_process_and_its_workers(monkeypatch):
    """Freeing a block above glibc's default mmap threshold lowers resident memory at once."""
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    direct_runner.return_freed_memory()
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(128 * 1024)
    # Without the fixed threshold, glibc raises it to the largest block freed so far, so the
    # second 20 MB block comes from the heap and stays resident after it is freed.
    for _ in range(2):
        before = _resident_bytes()
        block = bytearray(20 * 2**20)
        block[::4096] = b"x" * len(block[::4096])  # Touch every page.
        del block
        assert _resident_bytes() - before < 4 * 2**20


def test_a_users_own_threshold_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    direct_runner.return_freed_memory()
    assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "65536"


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _filled_grouping_buffer():
    """A real runner shuffle buffer holding 300 keys, some with several values."""
    key_value = coders.TupleCoder([coders.BytesCoder(), coders.BytesCoder()])
    pre = coders.WindowedValueCoder(key_value, coders.coders.GlobalWindowCoder())
    post = coders.WindowedValueCoder(
        coders.TupleCoder([coders.BytesCoder(), coders.IterableCoder(coders.BytesCoder())]),
        coders.coders.GlobalWindowCoder(),
    )
    buffer = execution.GroupingBuffer(pre, post, core.Windowing(window.GlobalWindows()))
    for index in range(1000):
        element = window.GlobalWindows.windowed_value((b"key %d" % (index % 300), b"v%d" % index))
        buffer.append(pre.get_impl().encode_nested(element))
    return buffer


class _TableWatchingCoder:
    """Wraps the buffer's output coder to note how many keys its table holds at each encode."""

    def __init__(self, buffer):
        self._buffer, self._impl = buffer, buffer._post_grouped_coder.get_impl()
        self.keys_held = []

    def get_impl(self):
        return self

    def encode_to_stream(self, value, stream, nested):
        self.keys_held.append(len(self._buffer._table))
        self._impl.encode_to_stream(value, stream, nested)


def test_shuffle_hand_over_sends_what_beam_sends_and_frees_keys_as_it_goes(monkeypatch):
    expected = _filled_grouping_buffer().partition(3)
    monkeypatch.setattr(execution.GroupingBuffer, "partition", execution.GroupingBuffer.partition)
    direct_runner.hand_over_shuffles_once()
    buffer = _filled_grouping_buffer()
    watcher = buffer._post_grouped_coder = _TableWatchingCoder(buffer)
    assert buffer.partition(3) == expected
    # Beam's own partition keeps all 300 keys until every one is encoded.
    assert watcher.keys_held == list(range(299, -1, -1))
