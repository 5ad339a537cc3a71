"""What every entry point prints: its own progress on the console, everything in a log file.

Call `start` first thing in an entry point's module, before TensorFlow or Beam is imported:
- Logging is configured before those imports, so their import-time warnings find a handler
  (instead of Python's bare last-resort output, or a `basicConfig` that prints every later line
  a second time), and TensorFlow's logger, seeing the root handlers, adds no handler of its own
  (the source of every INFO line printed twice).
- The process' native stderr (file descriptor 2) goes to the log file, so what TensorFlow's C++
  runtime writes (the CUDA plug-in registration errors of a CPU-only build, oneDNN notices) is
  kept there; Python's `sys.stderr` (tracebacks, usage errors) stays on the console.
- The console shows records at INFO and above from this repository's code and ERROR and above
  from libraries; the log file gets every record, Python warnings included.
`--verbosity=1` (or `-v 1`) shows everything on the console, as without this module.
A record logged with `extra=FILE_ONLY` (detail a user rarely needs) goes to the log file only.

Progress lines (the Beam job's reads and stages, decoding in evaluation and in the serving tools)
share `Throttle`, which spaces them, and `duration` / `time_left`, which keep their times in one
style; `Progress` is the whole line for work counted in units of a known total.
"""

import json
import logging
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_CODE = tuple(
    os.path.join(REPO, package) + os.sep
    for package in ("pipeline", "preprocessing", "trainer", "launch", "bench")
)
CACHE_LOG_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
    "nmt",
    "logs",
)
_CONSOLE_FORMAT = "%(asctime)s %(message)s"
FILE_ONLY = {"file_only": True}
_LOG = logging.getLogger(__name__)
_FILE_FORMAT = (
    "%(asctime)s %(levelname).1s %(process)d %(name)s %(filename)s:%(lineno)d] %(message)s"
)


def flag_value(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The value of the first of `names` (e.g. '--log_dir', '-v') in argv, in either spelling."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
    return None


def verbosity_from(argv: list[str]) -> int:
    value = flag_value(argv, ("--verbosity", "--v", "-v"))
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0  # the entry point's own parser reports the bad value


def is_own_code(path: str) -> bool:
    """Whether the source file `path` is this repository's code (not a library's)."""
    return path.startswith(_OWN_CODE)


class _ConsoleFilter(logging.Filter):
    """INFO and above from this repository's code; ERROR and above from libraries."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        if is_own_code(record.pathname):
            return record.levelno >= logging.INFO
        return record.levelno >= logging.ERROR


class _ConsoleFormatter(logging.Formatter):
    def __init__(self):
        super().__init__(_CONSOLE_FORMAT, datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, message = text.split(" ", 1)
            return f"{stamp} {record.levelname}: {message}"
        return text


class _ConsoleHandler(logging.Handler):
    """Writes to the console stream (not a StreamHandler: absl's set-up removes those)."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except Exception:  # noqa: BLE001  (logging must not raise)
            self.handleError(record)


def _task_suffix() -> str:
    """'.worker-1' and the like in a multi-worker job, so workers on one host keep one log each."""
    try:
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    except ValueError:
        return ""
    return f".{task['type']}-{task.get('index', 0)}" if "type" in task else ""


def log_path(program: str, log_dir: str | None) -> str:
    """Where `program` logs: `log_dir`, unless unset or remote (then the per-user cache)."""
    if not log_dir or "://" in log_dir:
        log_dir = CACHE_LOG_DIR
    os.makedirs(log_dir, exist_ok=True)
    return os.path.join(log_dir, f"{program}{_task_suffix()}.log")


def start_if_program(
    program: str,
    module_name: str,
    run_dir_flag: str | None = None,
    native: bool = True,
) -> str | None:
    """`start` when this process runs `program` (`python -m` or its console script), else None.

    Entry-point modules call this at the top, before importing TensorFlow or Beam; imported
    by a test or another module, they leave the process' logging alone. The log directory is
    `--log_dir` if given, else `<value of run_dir_flag>/logs` (e.g. the trainer's model_dir).
    """
    if module_name != "__main__" and os.path.basename(sys.argv[0]) != program:
        return None
    log_dir = flag_value(sys.argv, ("--log_dir",))
    if log_dir is None and run_dir_flag:
        run_dir = flag_value(sys.argv, (run_dir_flag,))
        log_dir = os.path.join(run_dir, "logs") if run_dir else None
    return start(program, log_dir, native=native)


def start(
    program: str,
    log_dir: str | None = None,
    argv: list[str] | None = None,
    native: bool = True,
) -> str:
    """Sets up the console and the log file for this process; returns the log file's path.

    Args:
      program: the entry point's name, e.g. 'nmt-train' (names the log file).
      log_dir: directory of the log file (None or remote: the per-user cache directory).
      argv: the command line, read for `--verbosity` (default `sys.argv`).
      native: also send native stderr to the log (for processes that load TensorFlow).
    """
    argv = sys.argv if argv is None else argv
    verbosity = verbosity_from(argv)
    if verbosity > 0:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:  # C++ warnings and errors into the log (an explicit setting wins)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    path = log_path(program, log_dir)
    log_file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115  (process-long)
    log_file.write(f"\n=== {program} {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
    console = sys.stderr
    if native and verbosity <= 0:
        console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8")
        os.dup2(log_file.fileno(), 2)
        sys.stderr = os.fdopen(os.dup(console.fileno()), "w", buffering=1, encoding="utf-8")
    _configure_logging(log_file, console, verbosity)
    sys.excepthook = _log_uncaught
    return path


def _log_uncaught(kind, value, traceback) -> None:
    """Uncaught exceptions go to the console and, with their traceback, to the log file."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger().critical("Uncaught exception", exc_info=(kind, value, traceback))


def _configure_logging(log_file, console, verbosity: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    to_file = logging.StreamHandler(log_file)
    to_file.setFormatter(logging.Formatter(_FILE_FORMAT))
    to_console = _ConsoleHandler(console)
    to_console.setFormatter(_ConsoleFormatter())
    if verbosity <= 0:
        to_console.addFilter(_ConsoleFilter())
    root.addHandler(to_file)
    root.addHandler(to_console)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)
    logging.captureWarnings(True)
    _silence_absl_handler()


def _silence_absl_handler() -> None:
    """Keeps absl's handler out: `app.run` adds it to the root logger unless already there.

    Registered but filtered, it prints nothing, so each record goes out once, through the two
    handlers above (absl's would print every line a second time on stderr).
    """
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    handler = absl_logging.get_absl_handler()
    handler.python_handler.addFilter(lambda record: False)
    logging.getLogger().addHandler(handler)


class Throttle:
    """Says yes at most once per `seconds`; the first yes comes `seconds` after it is made.

    A progress logger asks on every unit of work (a batch, a read) and logs when told yes, so
    fast and slow work alike print a line about every `seconds`. Not thread-safe: callers that
    share one across threads hold their own lock.
    """

    def __init__(self, seconds: float, clock=time.monotonic):
        self._seconds = seconds
        self._clock = clock  # monotonic: a wall-clock jump must not stall or flood the lines
        self._last = clock()

    def ready(self) -> bool:
        now = self._clock()
        if now - self._last < self._seconds:
            return False
        self._last = now
        return True


def duration(seconds: float) -> str:
    """'45 s', '12 min 5 s' or '26 h 3 min': short enough for a progress line."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def time_left(remaining: float, rate: float) -> str:
    """'about 1 min 30 s left': `remaining` units of work at `rate` units a second (rate > 0)."""
    return f"about {duration(remaining / rate)} left"


class Progress:
    """Counts units of work of a known total; logs at most every `seconds` how far it is:
    'decoding test: 40/100 sentences (40%), 3.3/s, about 18 s left'.

    With `final_line` the last unit gets a line too (the total and the mean rate), however soon
    it comes; a caller whose results follow at once leaves it off.
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "sentences",
        seconds: float = 10.0,
        final_line: bool = True,
        clock=time.monotonic,
    ):
        self.what, self.total, self.unit, self.count = what, total, unit, 0
        self._final_line = final_line
        self._clock = clock
        self._started = clock()
        self._throttle = Throttle(seconds, clock)

    def add(self, count: int) -> None:
        self.count += count
        finished = self.count >= self.total
        if not (finished and self._final_line) and (finished or not self._throttle.ready()):
            return
        rate = self.count / max(self._clock() - self._started, 1e-9)
        left = "" if finished else f", {time_left(self.total - self.count, rate)}"
        _LOG.info(
            "%s: %d/%d %s (%.0f%%), %.1f/s%s",
            self.what,
            self.count,
            self.total,
            self.unit,
            100.0 * self.count / max(self.total, 1),
            rate,
            left,
        )
