"""What the job says while it runs: a line as each long stage starts and ends, counted progress.

Beam leaves a launcher little to watch on the DirectRunner: its engine (FnApiRunner, Beam 2.77)
runs the whole pipeline inside `Pipeline.run`, so the result, and with it the metrics, exists only
once the job is over, and the engine's own stage logs are debug lines naming fused stages by
internal ids. So the job reports from both sides:

- Workers (every runner): the readers count what they read (`Meter`: bytes of text files,
  examples of a TFDS set), and the tokenizer the pairs it tokenized, and log, at most every
  `seconds` per worker, how much they have done and in how long. On Dataflow, Flink or Spark
  these lines are in the workers' logs.
- The launching process (DirectRunner): `Reporter` times each fused stage the engine runs (it
  wraps `FnApiRunner._execute_bundle`, a private method: with another Beam it says so in the log
  and reports nothing), puts one line on the console as a long stage starts and ends and one
  while it runs, and turns the workers' counts into one line for the whole input (or all the
  pairs) with an ETA.
  Worker processes (`--direct_running_mode=multi_processing`) send their log records to this
  process, where Beam logs each one as a `Worker: <LogEntry>` line; the reporter passes on those
  from this project's code (counted progress, warnings) as plain lines, once.

Every stage, short ones too, is in the log file; the console gets at most one progress line per
`seconds`. Nothing here can fail the job: a report that cannot be made is left out.
"""

import contextlib
import logging
import os
import re
import threading
import time
import uuid

from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from google.protobuf import text_format

from pipeline import console

# The engine's logger for log records sent by worker processes (Beam 2.77).
WORKER_LOG_RELAY = "apache_beam.runners.portability.local_job_service"
_WORKER_PREFIX = "Worker: "
# A worker's count of its work: "Read progress: worker 12 has read 512 of 1024 bytes of a.tsv in
# 2.0 s." (and "Tokenize progress: ... has tokenized ... pairs of ..."), one format for every kind.
_WORK_FORMAT = "%s progress: worker %d has %s %d of %d %s of %s in %.1f s."
_WORK_PATTERN = re.compile(
    r"(\w+) progress: worker (\d+) has (\w+) (\d+) of (\d+) (\w+) of (.+) in ([\d.]+) s\.$"
)
# What the work is called in each place: (line prefix, past tense, the console's present).
READ = ("Read", "read", "Reading")
CLEAN = ("Clean", "cleaned", "Cleaning")
DEDUPLICATE = ("Deduplicate", "deduplicated", "Deduplicating")
TOKENIZE = ("Tokenize", "tokenized", "Tokenizing")
_ACTIONS = {action[0]: action for action in (READ, CLEAN, DEDUPLICATE, TOKENIZE)}
BYTES, EXAMPLES, LINES, PAIRS = "bytes", "examples", "lines", "pairs"
# Least seconds between two progress lines, by default (`--progress_seconds`).
DEFAULT_SECONDS = 30.0
# Stages shorter than this are in the log file only.
ANNOUNCE_AFTER_SECONDS = 5.0
_LOG = logging.getLogger(__name__)


def done_of(done: float, total: float, unit: str) -> str:
    """'12.5 MB of 3.1 GB' for bytes, '5,000 of 12,345 examples' otherwise."""
    if unit == BYTES:
        return f"{size(done)} of {size(total)}"
    return f"{done:,.0f} of {total:,.0f} {unit}"


def size(nbytes: float) -> str:
    """'512 B', '12 kB', '12.5 MB', '3.1 GB'."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.0f} kB" if nbytes >= 2**10 else f"{nbytes:.0f} B"


class _WorkerCount:
    """What this process has done of one piece of work in one job, summed over its meters."""

    def __init__(self, seconds: float):
        self.done = 0
        self.started = time.monotonic()
        self.throttle = console.Throttle(seconds)


_counts: dict[tuple[str, str], _WorkerCount] = {}
_counts_lock = threading.Lock()


class Meter:
    """Counts one worker's share of a piece of work of known size (an input's bytes or examples,
    the job's pairs); logs the worker's total at most every `seconds`.

    A worker reads many ranges and files of an input, or tokenizes many batches, one after
    another or in threads; their counts add up per process (and per job, named by `job`, as
    tests run jobs in one process). A compressed file counts its size on disk once read, as its
    total does.
    """

    _FLUSH_EVERY = 1024  # adds: the count is shared under a lock, so not every line

    def __init__(
        self,
        job: str,
        name: str,
        total: int,
        seconds: float,
        unit: str = BYTES,
        action: tuple[str, str, str] = READ,
    ):
        self._name = name
        self._total = total
        self._unit = unit
        self._action = action
        with _counts_lock:
            self._count = _counts.setdefault((job, name), _WorkerCount(seconds))
        self._pending = 0
        self._adds = 0

    def add(self, amount: int) -> None:
        self._pending += amount
        self._adds += 1
        if self._adds % self._FLUSH_EVERY == 0:
            self.flush()

    def flush(self) -> None:
        with _counts_lock:
            count = self._count
            count.done += self._pending
            self._pending = 0
            if not count.throttle.ready():
                return
            done, seconds = count.done, time.monotonic() - count.started
        prefix, past, _ = self._action
        _LOG.info(
            _WORK_FORMAT,
            prefix,
            os.getpid(),
            past,
            done,
            self._total,
            self._unit,
            self._name,
            seconds,
        )


class LazyMeter:
    """A `Meter` named when the pipeline is built (so one job's workers share one count) and
    made on first use, in the worker, where its total is known (a side input, file sizes)."""

    def __init__(self, name: str, seconds: float, unit: str, action: tuple[str, str, str]):
        self._args = (uuid.uuid4().hex, name, seconds, unit, action)
        self._meter = None

    def add(self, amount: int, total: int) -> None:
        if self._meter is None:
            job, name, seconds, unit, action = self._args
            self._meter = Meter(job, name, total, seconds, unit, action)
        self._meter.add(amount)

    def flush(self) -> None:
        if self._meter is not None:
            self._meter.flush()


class _WorkProgress:
    """The workers' counts -> one line per piece of work: how much is done, of what, time left."""

    def __init__(self, throttle: console.Throttle):
        self._throttle = throttle
        self._workers: dict[tuple[str, str], dict[int, tuple[int, float]]] = {}

    def update(
        self,
        worker: int,
        done: int,
        total: int,
        name: str,
        seconds: float,
        unit: str = BYTES,
        action: tuple[str, str, str] = READ,
    ) -> bool:
        """Takes one worker's count; logs the sum if the throttle allows. Returns whether the
        work is all done."""
        workers = self._workers.setdefault((action[0], name), {})
        workers[worker] = (done, seconds)
        done = sum(count for count, _ in workers.values())
        if not self._throttle.ready():
            return done >= total
        rate = sum(count / took for count, took in workers.values() if took > 0)
        left = f", {console.time_left(total - done, rate)}" if rate and done < total else ""
        _LOG.info(
            "%s %s: %s (%.0f%%)%s",
            action[2],
            name,
            done_of(done, total, unit),
            100.0 * done / max(total, 1),
            left,
        )
        return done >= total


class _Stage:
    def __init__(self, number: int, count: int, steps: str):
        self.number, self.count, self.steps = number, count, steps
        self.started = time.monotonic()
        self.announced = False
        self.counted = False  # whether workers count its progress (then that is its line)

    def label(self) -> str:
        return f"Stage {self.number}/{self.count} ({self.steps})"


def stage_steps(stage, most: int = 3) -> str:
    """The job's top-level steps a fused stage runs, e.g. 'CleanPairs, DropDuplicates'.

    The first `most` in the engine's order (the one the stage reads from first), then how many
    more: a fused stage can hold a dozen, most of them small counts.
    """
    steps = []
    for transform in stage.transforms:
        step = transform.unique_name.split("/")[0]
        if step and not step.startswith("ref_") and step not in steps:
            steps.append(step)
    if len(steps) > most:
        return f"{', '.join(steps[:most])} and {len(steps) - most} more"
    return ", ".join(steps) or stage.name


class Reporter:
    """Reports the stages the DirectRunner's engine runs and the workers' counted progress.

    Use as a context manager around the pipeline's run, in the launching process. Stages that
    run `announce_after` seconds or more get a console line as they start (once they have run
    that long), one at most every `seconds` while they run, and one as they end; every stage is
    in the log file.
    """

    def __init__(self, seconds: float, announce_after: float = ANNOUNCE_AFTER_SECONDS):
        self._seconds = seconds
        self._announce_after = min(announce_after, seconds)
        self._throttle = console.Throttle(seconds)
        self._work = _WorkProgress(self._throttle)
        self._lock = threading.RLock()  # held while logging, and the filter takes it too
        self._stage: _Stage | None = None
        self._numbers: dict[str, int] = {}
        self._stop = threading.Event()

    def __enter__(self):
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(_wrapped_execute_bundle(self._run_stage))
        for logger in (logging.getLogger(WORKER_LOG_RELAY), _LOG):
            logger.addFilter(self._filter)
            self._exit.callback(logger.removeFilter, self._filter)
        relay = logging.getLogger(WORKER_LOG_RELAY)
        level = relay.level
        relay.setLevel(logging.INFO)  # the workers' INFO records reach the filter
        self._exit.callback(relay.setLevel, level)
        watch = threading.Thread(target=self._watch, name="stage-progress", daemon=True)
        watch.start()
        self._exit.callback(watch.join)
        self._exit.callback(self._stop.set)
        return self

    def __exit__(self, *exc_info):
        self._exit.close()

    def _run_stage(self, execute, runner, context, bundle_context, bundle_input):
        stage = self._begin(context, bundle_context.stage)
        try:
            return execute(runner, context, bundle_context, bundle_input)
        finally:
            if stage is not None:
                self._finish()

    def _begin(self, context, stage) -> _Stage | None:
        """The stage's report, begun; None if this engine's stage cannot be described."""
        try:
            number = self._numbers.setdefault(stage.name, len(self._numbers) + 1)
            with self._lock:
                self._stage = _Stage(number, len(context.stages), stage_steps(stage))
                if self._announce_after <= 0:
                    self._announce(self._stage)
                return self._stage
        except Exception:  # noqa: BLE001  (the stage runs whether or not it is reported)
            _LOG.info(
                "Cannot describe a stage of this engine.", exc_info=True, extra=console.FILE_ONLY
            )
            return None

    def _finish(self) -> None:
        with self._lock:
            self._end(self._stage)
            self._stage = None

    def _announce(self, stage: _Stage) -> None:
        stage.announced = True
        started = time.strftime("%H:%M:%S", time.localtime(time.time() - self._age(stage)))
        _LOG.info("%s started at %s", stage.label(), started)

    def _end(self, stage: _Stage) -> None:
        extra = None if stage.announced else console.FILE_ONLY
        _LOG.info("%s done in %.1f s", stage.label(), self._age(stage), extra=extra)

    @staticmethod
    def _age(stage: _Stage) -> float:
        return time.monotonic() - stage.started

    def _watch(self) -> None:
        """Announces long stages and says, at most every `seconds`, how long one has run.

        The first such line comes `seconds` into the stage, not just after its announcement; a
        stage whose readers report progress gets theirs instead (ticks taking the shared
        throttle as it comes due would crowd out the workers' reports, which come at any time).
        """
        while not self._stop.wait(min(1.0, max(self._seconds / 4, 0.05))):
            with self._lock:
                stage = self._stage
                if stage is None:
                    continue
                if not stage.announced and self._age(stage) >= self._announce_after:
                    self._announce(stage)
                elif (
                    stage.announced
                    and not stage.counted
                    and self._age(stage) >= self._seconds
                    and self._throttle.ready()
                ):
                    _LOG.info(
                        "%s running for %s", stage.label(), console.duration(self._age(stage))
                    )

    def _filter(self, record: logging.LogRecord) -> bool:
        """Takes in counted progress; passes on this project's worker records as plain lines."""
        try:
            if record.name == WORKER_LOG_RELAY:
                return self._relay(record)
            return not self._took_work_progress(record.getMessage())
        except Exception:  # noqa: BLE001  (a report that cannot be made is left out)
            return True

    def _relay(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(_WORKER_PREFIX):
            return True
        entry = _parse_log_entry(message[len(_WORKER_PREFIX) :])
        path, _, line = entry.log_location.rpartition(":") if entry else ("", "", "")
        if entry is None or not console.is_own_code(path):
            # What Beam itself logged before: the workers' warnings and errors, to the log file.
            return record.levelno >= logging.WARNING
        if not self._took_work_progress(entry.message):
            # As if logged here, where it was written (the log file names that file and line).
            text = f"{entry.message}\n{entry.trace}" if entry.trace else entry.message
            own = logging.LogRecord(
                _LOG.name, record.levelno, path, int(line or 0), text, None, None
            )
            _LOG.handle(own)
        return False

    def _took_work_progress(self, message: str) -> bool:
        match = _WORK_PATTERN.match(message)
        if not match or match.group(1) not in _ACTIONS:
            return False
        prefix, worker, _, done, total, unit, name, seconds = match.groups()
        with self._lock:  # the throttle is shared with the stage watcher's thread
            finished = self._work.update(
                int(worker), int(done), int(total), name, float(seconds), unit, _ACTIONS[prefix]
            )
            if self._stage is not None:
                # While counted work goes on, no "running for" lines crowd its lines out; once
                # it is done, the rest of the stage gets them again.
                self._stage.counted = not finished
        return True


def _parse_log_entry(text: str):
    """The `LogEntry` Beam's engine printed (one line of protobuf text), or None."""
    try:
        return text_format.Parse(text, beam_fn_api_pb2.LogEntry())
    except text_format.ParseError:
        return None


@contextlib.contextmanager
def _wrapped_execute_bundle(run_stage):
    """Routes the DirectRunner engine's stage runs through `run_stage` while open."""
    execute = getattr(fn_runner.FnApiRunner, "_execute_bundle", None)
    if execute is None:
        _LOG.info(
            "This Beam's FnApiRunner has no _execute_bundle (Beam 2.77 has): no stage lines.",
            extra=console.FILE_ONLY,
        )
        yield
        return

    def execute_bundle(runner, context, bundle_context, bundle_input):
        return run_stage(execute, runner, context, bundle_context, bundle_input)

    fn_runner.FnApiRunner._execute_bundle = execute_bundle
    try:
        yield
    finally:
        fn_runner.FnApiRunner._execute_bundle = execute
