"""The trainer job and its command line: derived runtime, reproducibility, redaction."""

import pytest

from launch import commands
from pipeline import config as config_lib
from pipeline import redact


def test_job_records_data_dir_and_multi_worker_strategy_in_config_and_flags():
    job = commands.build_trainer_job(
        "attention_seq2seq/tiny", "/runs/a", data_dir="/data/d", num_workers=2, restart=True
    )
    assert job.config.data.data_dir == "/data/d"
    assert job.config.runtime.strategy == "multi_worker_mirrored"
    assert job.argv("/cfg.yaml") == [
        "python",
        "-m",
        "trainer.main",
        "--experiment=attention_seq2seq/tiny",
        "--config_file=/cfg.yaml",
        "--data_dir=/data/d",
        "--model_dir=/runs/a",
        "--strategy=multi_worker_mirrored",
        "--restart",
    ]


def test_single_worker_keeps_configured_strategy_and_tpu_is_forced():
    one = commands.build_trainer_job(
        "attention_seq2seq/tiny",
        "/m",
        data_dir="/d",
        params_override="runtime.strategy=mirrored",
    )
    assert one.config.runtime.strategy == "mirrored"
    tpu = commands.build_trainer_job(
        "attention_seq2seq/tiny", "/m", data_dir="gs://b/d", strategy="tpu", tpu="my-tpu"
    )
    assert tpu.flags("/c")[-2:] == ["--strategy=tpu", "--tpu=my-tpu"]


def test_shipped_yaml_alone_reproduces_the_config(tmp_path):
    """A saved config (e.g. a run's config.yaml) rebuilds the same job, without any overrides."""
    job = commands.build_trainer_job(
        "attention_seq2seq/tiny",
        "/m",
        data_dir="/d",
        num_workers=2,
        params_override="train.learning_rate=0.01,model.units=48",
    )
    saved = tmp_path / "config.yaml"
    saved.write_text(job.config_yaml)
    assert config_lib.build_config("attention_seq2seq/tiny", str(saved)) == job.config
    again = commands.build_trainer_job(
        "attention_seq2seq/tiny", "/m", config_file=str(saved), num_workers=2
    )
    assert again.config == job.config


def test_missing_data_dir_is_a_config_error():
    with pytest.raises(config_lib.ConfigError, match="--data_dir"):
        commands.build_trainer_job("attention_seq2seq/tiny", "/m")


def test_redaction_masks_secret_names_only():
    assert redact.redact_env({"HF_TOKEN": "t", "api_key": "k", "LANG": "C"}) == {
        "HF_TOKEN": redact.REDACTED,
        "api_key": redact.REDACTED,
        "LANG": "C",
    }
    assert redact.redact_argv(
        ["env", "DB_PASSWORD=pw", "python", "--access_token=t", "--model_dir=/m", "plain"]
    ) == [
        "env",
        f"DB_PASSWORD={redact.REDACTED}",
        "python",
        f"--access_token={redact.REDACTED}",
        "--model_dir=/m",
        "plain",
    ]
