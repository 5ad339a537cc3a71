"""Three workarounds for the DirectRunner's engine (FnApiRunner) at corpus scale.

**A race that silently drops elements.** With gRPC workers
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
reproduces it with Beam alone. The runner writes a bundle's whole input and then closes the
stream, so the timer flush has no job to do there: with the limit at 0 the streams are
size-buffered (as SDK workers' own streams are by default) and flushed only by the thread that
writes them.

**Memory freed but never returned.** The runner moves each stage's data in chunks of up to
10 MB. glibc's malloc serves large blocks with mmap, returned to the system when freed, but it
raises that threshold to the size of the largest block freed so far (up to 32 MB): after the
first chunks, every chunk comes from the heap, where freed space stays in the process. Python
objects hold only a fraction of it (tracemalloc: 250 MB at peak for a 200k-pair job whose runner
process grew by 900 MB). Fixing the threshold at glibc's default of 128 KiB keeps large blocks
on mmap: the same job's runner process peaked at 1.07 GB instead of 1.45 GB.

**A shuffle held twice while it is handed over.** The runner keeps a shuffle's elements in a
`GroupingBuffer` table (decoded keys and values) and, when the next stage starts, encodes the
whole table into one stream per worker (`partition`), copies each stream into a bytes value and
only then clears the table: for a moment the shuffle is held two to three times over. The
replacement encodes the same elements in the same order but drops each key from the table as it
is encoded and each stream once copied (checked in apache-beam 2.77.0,
`runners/portability/fn_api_runner/execution.py`).
"""

import ctypes
import ctypes.util
import logging
import os

from apache_beam.runners.portability.fn_api_runner import execution, worker_handlers
from apache_beam.transforms import trigger, window
from apache_beam.utils import windowed_value

# glibc's mallopt parameter and its environment twin, read by each process at start.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 128 * 1024
_MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


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


def return_freed_memory() -> None:
    """Keeps large blocks on mmap in this process and in the worker processes it starts.

    This process is changed with glibc's `mallopt`; workers inherit the environment variable
    that glibc reads at start. A user's own `MALLOC_MMAP_THRESHOLD_` is left alone, and on a C
    library other than glibc nothing changes.
    """
    if _MMAP_THRESHOLD_ENV in os.environ:
        return
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return
    if libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) != 1:
        return
    os.environ[_MMAP_THRESHOLD_ENV] = str(_MMAP_THRESHOLD_BYTES)
    logging.debug(
        "glibc's mmap threshold fixed at %d bytes (see %s).", _MMAP_THRESHOLD_BYTES, __name__
    )


def _global_window_pane(key_and_values):
    """The single on-time firing of a global window, as `GroupingBuffer.partition` makes it."""
    return [
        windowed_value.WindowedValue(
            key_and_values,
            window.GlobalWindow().max_timestamp(),
            (window.GlobalWindow(),),
            windowed_value.PaneInfo(
                is_first=True,
                is_last=True,
                timing=windowed_value.PaneInfoTiming.ON_TIME,
                index=0,
                nonspeculative_index=0,
            ),
        )
    ]


def _partition_releasing_table(self, n: int) -> list[list[bytes]]:
    """`GroupingBuffer.partition` that frees each key's values as soon as they are encoded."""
    if not self._grouped_output:
        if self._windowing.is_default():
            fire = _global_window_pane
        else:
            driver = trigger.create_trigger_driver(self._windowing, True)

            def fire(key_and_values):
                return driver.process_entire_key(*key_and_values)

        coder_impl = self._post_grouped_coder.get_impl()
        key_coder_impl = self._key_coder.get_impl()
        streams = [execution.create_OutputStream() for _ in range(n)]
        for index, encoded_key in enumerate(list(self._table)):
            values = self._table.pop(encoded_key)
            for element in fire((key_coder_impl.decode(encoded_key), values)):
                coder_impl.encode_to_stream(element, streams[index % n], True)
        grouped = []
        for index in range(n):
            grouped.append([streams[index].get()])
            streams[index] = None
        self._grouped_output = grouped
        self._table.clear()
    return self._grouped_output


def hand_over_shuffles_once() -> None:
    """Makes the runner release a shuffle's table while it encodes it for the workers."""
    partition = getattr(execution.GroupingBuffer, "partition", None)
    if partition is None or partition is _partition_releasing_table:
        return
    if not hasattr(execution, "create_OutputStream"):
        logging.warning("This Beam's runner differs from 2.77; shuffles are handed over as is.")
        return
    execution.GroupingBuffer.partition = _partition_releasing_table
