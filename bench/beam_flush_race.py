"""Standalone reproduction: Beam's FnApiRunner drops elements streamed to gRPC workers.

Found with apache-beam 2.77.0 (Python 3.11, Linux); it imports nothing but Beam, so it can be
attached to an upstream report as is.

The runner streams a bundle's buffered input to a worker through
`data_plane.TimeBasedBufferingClosableOutputStream`. Its timer thread flushes every
`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS` (1000 ms) by taking the buffer (`get()`), passing
it to the send queue (which blocks while the worker is behind) and then emptying the buffer
(`_clear()`). The runner thread writes to the same buffer without a lock, so whatever it
writes between `get()` and `_clear()` is lost, and the job still succeeds.

    python bench/beam_flush_race.py stream                  # the class alone, Beam's 1000 ms
    python bench/beam_flush_race.py pipeline                # a 2-worker pipeline, 200 MB
    python bench/beam_flush_race.py pipeline --flush_ms=0   # the timer off: nothing lost

`stream` writes 4,000 chunks over about 4 s while a flush takes 100 ms (a full send queue), as
the runner does with a large bundle input; it loses the chunks written during flushes.
`pipeline` runs FlatMap -> ParDo with a side input computed from the FlatMap's output, which
makes the runner buffer that output and stream it to the workers, on the DirectRunner with
`--direct_running_mode=multi_processing --direct_num_workers=2`, and counts what the ParDo
received. Beam's default interval needs a bundle input that takes over a second to write (a
1M-line job lost 2.4% of its lines); `--flush_ms` (default 10) shortens the interval so the same
race shows at 200 MB in under a minute. `--flush_ms=0` (size-based buffering, no timer thread)
loses nothing.
"""

import argparse
import sys
import time

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane


def reproduce_with_the_stream(chunks: int, chunk_bytes: int, flush_ms: int) -> tuple[int, int]:
    """Writes `chunks` chunks through the stream class; returns (bytes written, bytes sent)."""
    sent = []

    def slow_send(data: bytes) -> None:
        sent.append(len(data))
        time.sleep(0.1)  # The send queue is full: the worker is still busy with earlier data.

    # How the runner makes its streams: a timer-flushed one unless the interval is 0.
    stream = data_plane.ClosableOutputStream.create(
        lambda data: sent.append(len(data)), slow_send, flush_ms
    )
    chunk = b"x" * chunk_bytes
    for _ in range(chunks):
        stream.write(chunk)
        time.sleep(0.001)  # The runner thread gets the GIL back between chunks.
    stream.close()
    return chunks * chunk_bytes, sum(sent)


class _Receive(beam.DoFn):
    def __init__(self):
        self._received = Metrics.counter("reproduction", "received")

    def process(self, element, unused_total):
        self._received.inc()
        yield element


def reproduce_with_a_pipeline(megabytes: int, flush_ms: int) -> tuple[int, int]:
    """Runs the two-worker pipeline; returns (elements produced, elements received)."""
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = flush_ms
    producers, element_bytes = 40, 1000
    per_producer = megabytes * 2**20 // (producers * element_bytes)
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    pipeline = beam.Pipeline(options=options)
    produced = (
        pipeline
        | beam.Create(range(producers))
        | beam.Reshuffle()
        | beam.FlatMap(lambda i: ((i, j, b"x" * element_bytes) for j in range(per_producer)))
    )
    total = produced | beam.combiners.Count.Globally()
    # A side input computed from `produced` keeps this ParDo out of the FlatMap's stage: the
    # runner buffers `produced` and streams it to the workers itself.
    _ = produced | beam.ParDo(_Receive(), beam.pvalue.AsSingleton(total))
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query()["counters"]
    return producers * per_producer, sum(counter.committed for counter in counters)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("stream", "pipeline"))
    parser.add_argument("--flush_ms", type=int, help="Timer flush interval (default per mode).")
    parser.add_argument("--megabytes", type=int, default=200, help="Pipeline data size.")
    args = parser.parse_args(argv)
    print(f"apache-beam {beam.__version__}, Python {sys.version.split()[0]}")
    if args.mode == "stream":
        flush_ms = 1000 if args.flush_ms is None else args.flush_ms
        written, sent = reproduce_with_the_stream(4000, 1000, flush_ms)
        print(f"stream, flush every {flush_ms} ms: wrote {written} bytes, sent {sent}")
    else:
        flush_ms = 10 if args.flush_ms is None else args.flush_ms
        written, sent = reproduce_with_a_pipeline(args.megabytes, flush_ms)
        print(f"pipeline, flush every {flush_ms} ms: produced {written}, received {sent}")
    lost = written - sent
    print(f"lost {lost} ({100 * lost / written:.1f}%)" if lost else "nothing lost")


if __name__ == "__main__":
    main()
