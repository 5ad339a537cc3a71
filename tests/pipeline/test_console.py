"""What an entry point prints (pipeline/console.py): progress on the console, the rest in its log.

Each test runs the real entry point in a child process, as a user would, and reads both its
console (stderr) and its log file.
"""

import logging
import os
import re
import subprocess
import sys

import pytest

from pipeline import console
from tests import dataset_fixture

# Printed while TensorFlow, TFA and the distribution strategy start; none of it is for a user.
NOISE = (
    "Unable to register cuDNN factory",
    "Unable to register cuBLAS factory",
    "TensorFlow Addons (TFA) has ended development",
    "Using MirroredStrategy with devices",
)


def _train(model_dir, data_dir, *flags, overrides="train.train_steps=4,train.eval_every=4"):
    argv = dataset_fixture.tiny_train_argv(data_dir, str(model_dir), overrides, *flags)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=dataset_fixture.REPO, env=env, timeout=600
    )


def _log(model_dir) -> str:
    with open(os.path.join(model_dir, "logs", "nmt-train.log"), encoding="utf-8") as f:
        return f.read()


@pytest.mark.slow
def test_training_console_has_progress_once_and_the_log_has_everything(trained_tiny_run):
    """The session's shared run (tests/conftest.py), started with TF_CPP_MIN_LOG_LEVEL unset."""
    model_dir, screen = trained_tiny_run
    log = _log(model_dir)
    for noise in (*NOISE, "then broadcast to"):
        assert noise not in screen, noise
        assert noise in log, noise
    steps = dataset_fixture.TRAINED_RUN_STEPS
    last = f"step {steps}/{steps}"
    assert last in screen and f"eval dev step {steps}" in screen
    progress = [line for line in screen.splitlines() if last in line]
    assert len(progress) == 1, "every line once (not through absl's and TF's handlers both)"
    assert re.search(r" tok/s, 0 s left$", progress[0]), progress[0]
    assert log.count(f"{last} loss") == 1


def test_a_bad_dataset_is_a_usage_error_and_verbosity_restores_everything(tmp_path):
    missing = str(tmp_path / "no_dataset")
    quiet = _train(tmp_path / "quiet", missing)
    loud = _train(tmp_path / "loud", missing, "--verbosity=1")
    for result in (quiet, loud):
        assert result.returncode == 1
        assert "metadata.json not found" in result.stderr
        assert "Traceback" not in result.stderr
    for noise in NOISE:
        assert noise not in quiet.stderr, noise
        assert noise in _log(tmp_path / "quiet"), noise
        assert noise in loud.stderr, noise


def test_log_dir_defaults_and_flag_spellings(tmp_path, monkeypatch):
    argv = ["prog", "--model_dir", "/m", "--verbosity=2", "--log_dir=/l"]
    assert console.flag_value(argv, ("--model_dir",)) == "/m"
    assert console.flag_value(argv, ("--log_dir",)) == "/l"
    assert console.verbosity_from(argv) == 2
    assert console.verbosity_from(["prog", "-v", "1"]) == 1
    assert console.verbosity_from(["prog"]) == 0
    monkeypatch.setattr(console, "CACHE_LOG_DIR", str(tmp_path / "cache"))
    assert console.log_path("nmt-x", "gs://bucket/run") == str(tmp_path / "cache" / "nmt-x.log")
    monkeypatch.setenv("TF_CONFIG", '{"task": {"type": "worker", "index": 1}}')
    assert console.log_path("nmt-x", str(tmp_path)) == str(tmp_path / "nmt-x.worker-1.log")


def test_importing_an_entry_point_leaves_logging_alone():
    code = (
        "import logging, sys; from trainer import evaluate_main; "
        "assert sys.stderr is sys.__stderr__ and not any("
        "h.__class__.__name__ == '_ConsoleHandler' for h in logging.getLogger().handlers)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=dataset_fixture.REPO
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_file_only_records_stay_off_the_console():
    record = logging.LogRecord("x", logging.WARNING, console.__file__, 1, "detail", (), None)
    assert console._ConsoleFilter().filter(record)
    record.__dict__.update(console.FILE_ONLY)
    assert not console._ConsoleFilter().filter(record)


def test_throttle_says_yes_once_per_interval():
    now = [0.0]
    throttle = console.Throttle(30, clock=lambda: now[0])
    answers = []
    for second in range(100):
        now[0] = second
        answers.append(throttle.ready())
    assert [second for second, yes in enumerate(answers) if yes] == [30, 60, 90]


def test_durations_round_to_the_second_and_keep_two_units():
    assert [console.duration(s) for s in (0.4, 59.4, 59.6, 754.9, 3599.6, 93_780)] == [
        "0 s",
        "59 s",
        "1 min 0 s",
        "12 min 35 s",
        "1 h 0 min",
        "26 h 3 min",
    ]
    assert console.time_left(90, 1.0) == "about 1 min 30 s left"


def test_progress_logs_the_time_left_every_interval_and_always_the_last_unit(caplog):
    now = [0.0]
    progress = console.Progress("translating", 100, seconds=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="pipeline.console")
    for batch in range(1, 11):  # Ten batches of 10 sentences, one every 3 s.
        now[0] = 3.0 * batch
        progress.add(10)
    assert [m for m in caplog.messages if m.startswith("translating")] == [
        "translating: 40/100 sentences (40%), 3.3/s, about 18 s left",
        "translating: 80/100 sentences (80%), 3.3/s, about 6 s left",
        "translating: 100/100 sentences (100%), 3.3/s",  # 6 s after the last line, but last
    ]


def test_progress_without_a_final_line_logs_every_interval_but_not_at_the_end(caplog):
    now = [0.0]
    progress = console.Progress(
        "decoding dev", 100, seconds=30, final_line=False, clock=lambda: now[0]
    )
    caplog.set_level(logging.INFO, logger="pipeline.console")
    for batch in range(1, 11):  # Ten batches of 10 sentences, one every 15 s.
        now[0] = 15.0 * batch
        progress.add(10)
    # The last batch (at 150 s) is due a line too; the evaluation's results follow instead.
    assert [m for m in caplog.messages if m.startswith("decoding")] == [
        "decoding dev: 20/100 sentences (20%), 0.7/s, about 2 min 0 s left",
        "decoding dev: 40/100 sentences (40%), 0.7/s, about 1 min 30 s left",
        "decoding dev: 60/100 sentences (60%), 0.7/s, about 1 min 0 s left",
        "decoding dev: 80/100 sentences (80%), 0.7/s, about 30 s left",
    ]
