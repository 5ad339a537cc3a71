"""A workaround for a race in the DirectRunner's engine that silently drops elements.

Beam's DirectRunner runs this job on the FnApiRunner. With gRPC workers
(`--direct_running_mode=multi_processing` or `multi_threading`), the runner process holds every
PCollection between stages and streams each bundle's input to a worker through a
`data_plane.TimeBasedBufferingClosableOutputStream`. A timer thread flushes that stream every
`worker_handlers.DATA_BUFFER_TIME_LIMIT_MS` (1000 ms): it takes the buffer (`get()`), hands it to
the send queue, which blocks while the worker is behind, and then empties the buffer (`_clear()`).
The runner thread keeps appending chunks of elements to the same buffer in the meantime, with no
lock, and everything it appends between `get()` and `_clear()` is discarded without an error.

A bundle input that takes longer than one flush interval to write (hundreds of MB, or a loaded
machine) loses whole chunks: 2.4% of a 1M-pair corpus in one run, 15% in another, with the rest
of the job none the wiser. Checked in apache-beam 2.77.0 (`runners/worker/data_plane.py`,
`runners/portability/fn_api_runner/worker_handlers.py`); `bench/beam_flush_race.py`
reproduces it with Beam alone.

The runner writes a bundle's whole input and then closes the stream, so the timer flush has no
job to do there: with the limit at 0 the streams are size-buffered (as SDK workers' own streams
are by default) and flushed only by the thread that writes them.
"""

import logging

from apache_beam.runners.portability.fn_api_runner import worker_handlers


def avoid_lossy_flush_race() -> None:
    """Turns off the runner's timer flush for the rest of this process.

    Call before a pipeline runs: the runner reads the setting when it starts its data server
    (runner side) and its in-process gRPC workers (worker side).
    """
    if worker_handlers.DATA_BUFFER_TIME_LIMIT_MS:
        logging.debug(
            "Setting the FnApiRunner's DATA_BUFFER_TIME_LIMIT_MS from %d to 0 (see %s).",
            worker_handlers.DATA_BUFFER_TIME_LIMIT_MS,
            __name__,
        )
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = 0
