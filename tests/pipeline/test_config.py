import dataclasses

import pytest

from pipeline import config


def test_every_registered_experiment_builds_and_validates():
    names = config.registered_experiments()
    assert {"attention_seq2seq/base", "attention_seq2seq/tiny"} <= set(names)
    for name in names:
        assert config.validate(config.get_experiment(name)) is not None


def test_precedence_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  units: 128\n  attention: bahdanau\ntrain:\n  learning_rate: 0.01\n")
    cfg = config.build_config(
        "attention_seq2seq/base", str(path), "train.learning_rate=0.5,data.bucket_boundaries=8;80"
    )
    assert cfg.model.units == 128
    assert cfg.model.attention == "bahdanau"
    assert cfg.train.learning_rate == 0.5
    assert cfg.data.bucket_boundaries == (8, 80)
    assert cfg.model.embedding_dim == config.ModelConfig().embedding_dim


def test_config_is_frozen():
    cfg = config.get_experiment("attention_seq2seq/base")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.learning_rate = 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.learning_rat=1", "unknown field 'learning_rat'"),
        ("model.units=abc", "expected int"),
        ("model.attention=dot", "model.attention='dot' is not one of"),
        ("train.sampling_probability=1.5", "sampling_probability must be in [0, 1]"),
        ("data.bucket_boundaries=8;16", "must be >= data.max_length+1"),
        ("train.jit_compile=maybe", "expected true or false"),
        ("units=3", "unknown field 'units'"),
        ("runtime.cpu_replicas=-1", "runtime.cpu_replicas must be >= 0"),
        (
            "runtime.cpu_replicas=3",
            "data.batch_size=64 must be divisible by runtime.cpu_replicas=3",
        ),
        ("runtime.cpu_replicas=2,train.jit_compile=true", "cannot run with train.jit_compile"),
        (
            "train.mixed_precision=mixed_float16,train.nonfinite=stop",
            "train.nonfinite=stop cannot run with train.mixed_precision=mixed_float16",
        ),
    ],
)
def test_bad_overrides_are_refused_with_the_field_named(override, message):
    with pytest.raises(config.ConfigError, match=None) as error:
        config.build_config("attention_seq2seq/base", params_override=override)
    assert message in str(error.value)


def test_yaml_round_trip_and_diff():
    cfg = config.build_config("attention_seq2seq/tiny", params_override="model.units=48")
    import yaml

    again = config.from_dict(yaml.safe_load(config.to_yaml(cfg)))
    assert again == cfg
    base = config.get_experiment("attention_seq2seq/tiny")
    assert config.diff(base, cfg) == ["model.units: 32 -> 48"]


def test_unknown_experiment_lists_known_ones():
    with pytest.raises(config.ConfigError, match="attention_seq2seq/base"):
        config.get_experiment("nope")


def test_resume_conflicts_ignore_safe_fields_and_name_unsafe_ones():
    saved = config.get_experiment("attention_seq2seq/tiny")
    new = config.build_config(
        "attention_seq2seq/tiny", params_override="train.train_steps=99,model.units=64"
    )
    assert config.resume_conflicts(saved, new) == ["model.units: 32 -> 64"]


def test_a_run_saved_with_a_float32_export_resumes_under_the_auto_default():
    """Runs saved before `model.export_precision=auto` was the default name float32; the
    export's signatures do not change what trains, so resuming them is no conflict."""
    saved = config.build_config(
        "attention_seq2seq/tiny", params_override="model.export_precision=float32"
    )
    new = config.get_experiment("attention_seq2seq/tiny")
    assert new.model.export_precision == "auto"
    assert config.resume_conflicts(saved, new) == []


def test_missing_or_malformed_config_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(config.ConfigError, match="nope.yaml does not exist"):
        config.build_config("attention_seq2seq/base", missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [units\n")
    with pytest.raises(config.ConfigError, match="bad.yaml: not valid YAML"):
        config.build_config("attention_seq2seq/base", str(bad))
