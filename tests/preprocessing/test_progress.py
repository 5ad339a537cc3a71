"""The job's progress lines: a line per stage start and end, read progress, each once, throttled."""

import itertools
import logging
import re
import time

import apache_beam as beam
from apache_beam.portability.api import beam_fn_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import fn_runner

from pipeline import console
from preprocessing import io, progress

STAGE = re.compile(r"Stage (\d+)/(\d+) \((.+)\) (started at|done in) ")


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress.__name__]


def test_read_progress_sums_the_workers_and_prints_one_line_per_interval(caplog):
    clock = _Clock()
    reads = progress._WorkProgress(console.Throttle(30, clock))
    caplog.set_level(logging.INFO)
    for second in range(1, 61):  # Two workers report every second for a minute.
        clock.now = second
        for worker in (1, 2):
            reads.update(worker, second * 2**20, 240 * 2**20, "corpus.tsv", float(second))
    # The first worker's report at 30 s lets a line out: 30 + 29 MB read at 1 MB/s each.
    assert _messages(caplog) == [
        "Reading corpus.tsv: 59.0 MB of 240.0 MB (25%), about 1 min 30 s left",
        "Reading corpus.tsv: 119.0 MB of 240.0 MB (50%), about 1 min 0 s left",
    ]


def test_read_progress_of_examples_counts_them_not_bytes(caplog):
    clock = _Clock()
    reads = progress._WorkProgress(console.Throttle(30, clock))
    caplog.set_level(logging.INFO)
    clock.now = 30
    reads.update(1, 5000, 20000, "tfds:wmt14_translate/de-en", 10.0, progress.EXAMPLES)
    assert _messages(caplog) == [
        "Reading tfds:wmt14_translate/de-en: 5,000 of 20,000 examples (25%), about 30 s left"
    ]


def test_tokenize_progress_sums_the_workers_under_its_own_name(caplog):
    clock = _Clock()
    work = progress._WorkProgress(console.Throttle(30, clock))
    caplog.set_level(logging.INFO)
    clock.now = 30
    pairs = ("sentence pairs", 10.0, progress.PAIRS, progress.TOKENIZE)
    work.update(1, 9000, 40000, *pairs)
    work.update(2, 1000, 40000, *pairs)  # the throttle let the first one out
    clock.now = 60
    work.update(1, 12000, 40000, *pairs)  # 12,000 + 1,000 at 1,200 + 100 pairs/s
    assert _messages(caplog) == [
        "Tokenizing sentence pairs: 9,000 of 40,000 pairs (22%), about 34 s left",
        "Tokenizing sentence pairs: 13,000 of 40,000 pairs (32%), about 21 s left",
    ]


def _worker_log(level: int, location: str, message: str) -> None:
    """Logs `message` as Beam's engine logs a record a worker process sent it."""
    entry = beam_fn_api_pb2.LogEntry(
        severity=beam_fn_api_pb2.LogEntry.Severity.INFO
        if level == logging.INFO
        else beam_fn_api_pb2.LogEntry.Severity.WARN,
        message=message,
        log_location=location,
    )
    bundle = beam_fn_api_pb2.LogEntry.List(log_entries=[entry])
    list(local_job_service.BeamFnLoggingServicer().Logging([bundle]))


def test_worker_records_of_this_project_become_plain_lines_once(caplog):
    caplog.set_level(logging.INFO)
    own = f"{io.__file__}:208"
    library = "/venv/apache_beam/runners/worker/sdk_worker.py:10"
    with progress.Reporter(seconds=0):
        _worker_log(logging.WARNING, own, "a.en and a.de have different line counts")
        _worker_log(logging.INFO, library, "Control channel established.")
        _worker_log(logging.WARNING, library, "No semi_persistent_directory found")
        _worker_log(
            logging.INFO,
            own,
            "Read progress: worker 7 has read 512 of 1024 bytes of corpus.tsv in 2.0 s.",
        )
    relayed = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert relayed[0] == (
        progress.__name__,
        "WARNING",
        "a.en and a.de have different line counts",
    )
    # A library's warning stays as Beam logs it (the console leaves it to the log file).
    assert relayed[1][:2] == (progress.WORKER_LOG_RELAY, "WARNING")
    assert "No semi_persistent_directory found" in relayed[1][2]
    assert relayed[2] == (
        progress.__name__,
        "INFO",
        "Reading corpus.tsv: 512 B of 1 kB (50%), about 2 s left",
    )
    assert len(relayed) == 3  # The library's INFO record is dropped, as before.
    assert (caplog.records[0].pathname, caplog.records[0].lineno) == (io.__file__, 208)
    assert logging.getLogger(progress.WORKER_LOG_RELAY).filters == []  # Left as found.


def test_without_the_engine_hook_the_job_still_runs_and_says_why_in_the_log(monkeypatch, caplog):
    monkeypatch.delattr(fn_runner.FnApiRunner, "_execute_bundle")
    caplog.set_level(logging.INFO)
    with progress.Reporter(seconds=30):
        pass
    [note] = caplog.records
    assert "no stage lines" in note.getMessage()
    assert note.file_only


def test_short_stages_stay_in_the_log_file(caplog):
    """A stage shorter than the announcement delay gets no console line, start or end."""
    caplog.set_level(logging.INFO)
    # The DirectRunner's engine itself: with network access the DirectRunner may run Prism.
    with progress.Reporter(seconds=30), beam.Pipeline(runner=fn_runner.FnApiRunner()) as pipeline:
        _ = pipeline | beam.Create(range(10)) | beam.Map(abs) | beam.combiners.Count.Globally()
    done = [r for r in caplog.records if r.name == progress.__name__]
    assert done and all(STAGE.match(r.getMessage()).group(4) == "done in" for r in done)
    for record in done:
        if float(record.getMessage().split(" done in ")[1][:-2]) < progress.ANNOUNCE_AFTER_SECONDS:
            assert record.file_only, record.getMessage()


def test_a_stage_that_cannot_be_described_still_runs(monkeypatch, caplog, tmp_path):
    def broken(stage):
        raise AttributeError("an engine whose stages have no transforms")

    monkeypatch.setattr(progress, "stage_steps", broken)
    caplog.set_level(logging.INFO)
    with progress.Reporter(seconds=0), beam.Pipeline(runner=fn_runner.FnApiRunner()) as pipeline:
        _ = (
            pipeline
            | beam.Create(["a", "b"])
            | beam.io.WriteToText(str(tmp_path / "out"), shard_name_template="")
        )
    assert (tmp_path / "out").read_text().split() == ["a", "b"]
    notes = {r.getMessage() for r in caplog.records if r.name == progress.__name__}
    assert notes == {"Cannot describe a stage of this engine."}


def _slow(element, seconds):
    time.sleep(seconds)
    return element


def test_a_long_stage_says_how_long_it_has_run_at_most_once_per_interval(caplog):
    """1 s between progress lines, a stage announced after 0.25 s that runs 2.5 s, starting
    when a progress line would already be due: lines come from 1 s into it, 1 s apart."""
    caplog.set_level(logging.INFO)
    with progress.Reporter(seconds=1, announce_after=0.25):
        time.sleep(1)
        with beam.Pipeline(runner=fn_runner.FnApiRunner()) as pipeline:
            _ = pipeline | beam.Create([1]) | beam.Map(_slow, 2.5)
    lines = [r for r in caplog.records if r.name == progress.__name__]
    shown = [r.getMessage() for r in lines if not getattr(r, "file_only", False)]
    assert STAGE.match(shown[0]).group(4) == "started at"
    assert STAGE.match(shown[-1]).group(4) == "done in"
    ticks = [int(re.search(r" running for (\d+) s$", m).group(1)) for m in shown[1:-1]]
    took = float(re.search(r" done in ([\d.]+) s$", shown[-1]).group(1))
    assert 1 <= len(ticks) <= int(took) and ticks[0] >= 1  # The k-th comes k s in, or later.
    times = [r.created for r in lines if " running for " in r.getMessage()]
    assert all(later - earlier >= 0.99 for earlier, later in itertools.pairwise(times))


def _read_slowly(element, reports):
    """Reports reading 10 bytes every 0.9 s, `reports` times: sparse, as workers' reports are."""
    meter = progress.Meter("test-job", "corpus.tsv", 10 * reports, 0)
    for _ in range(reports):
        time.sleep(0.9)
        meter.add(10)
        meter.flush()
    return element


def test_a_reading_stage_shows_read_progress_instead_of_its_running_time(caplog):
    """Readers' reports come at any time; ticks due as the throttle opens must not starve them."""
    caplog.set_level(logging.INFO)
    with progress.Reporter(seconds=1, announce_after=0.25):
        time.sleep(1)
        with beam.Pipeline(runner=fn_runner.FnApiRunner()) as pipeline:
            _ = pipeline | beam.Create([1]) | beam.Map(_read_slowly, 3)
    shown = _messages(caplog)
    reads = [m for m in shown if m.startswith("Reading corpus.tsv: ")]
    assert reads and not [m for m in shown if " running for " in m]


def _read_then_work(element):
    """Reports reading 10 of 30 bytes every 1.5 s, then works on for 2.5 s without counting."""
    meter = progress.Meter("test-job-2", "corpus.tsv", 30, 0)
    for _ in range(3):
        time.sleep(1.5)
        meter.add(10)
        meter.flush()
    time.sleep(2.5)
    return element


def test_a_stage_whose_counted_work_is_done_shows_its_running_time_again(caplog):
    caplog.set_level(logging.INFO)
    with (
        progress.Reporter(seconds=1, announce_after=0.25),
        beam.Pipeline(runner=fn_runner.FnApiRunner()) as pipeline,
    ):
        _ = pipeline | beam.Create([1]) | beam.Map(_read_then_work)
    shown = _messages(caplog)
    reads = [i for i, m in enumerate(shown) if m.startswith("Reading corpus.tsv: ")]
    assert shown[reads[-1]] == "Reading corpus.tsv: 30 B of 30 B (100%)"
    ticks = [i for i, m in enumerate(shown) if " running for " in m]
    # None while the read is counted, and again once it is all read.
    assert not [i for i in ticks if reads[0] < i < reads[-1]]
    assert [i for i in ticks if i > reads[-1]]
