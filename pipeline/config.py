"""The experiment config: one tree of frozen dataclasses, built in a fixed order.

Order of precedence: a registered experiment's defaults, then a YAML file, then `--params_override`
(`section.field=value,...`), then validation. The result is frozen: nothing below the entry point
reads flags or mutates config. Every field carries its default and a one-line description.
"""

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf
import yaml


class ConfigError(ValueError):
    """A config value, file or override is wrong; the message says which and why."""


def _field(default, doc: str):
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the preprocessed dataset lives and how batches are formed from it."""

    data_dir: str = _field("", "Preprocessed dataset directory (holds metadata.json).")
    max_length: int = _field(64, "Longest source or target in subword pieces, BOS/EOS excluded.")
    bucket_boundaries: tuple[int, ...] = _field(
        (8, 12, 16, 20, 24, 32, 48, 72), "Padded lengths; each batch is padded to one of these."
    )
    batch_size: int = _field(64, "Global batch in sentence pairs (split across replicas).")
    per_replica_batch_size: int = _field(
        0,
        "Sentence pairs per replica; > 0 sets the global batch (data.batch_size) to this times "
        "the replicas in sync at start-up. 0 keeps data.batch_size as the global batch.",
    )
    shuffle_buffer: int = _field(
        8192, "Training records shuffled together: each epoch permutes blocks of this many."
    )
    sort_pool: int = _field(
        32, "Batches per length-sorted pool; 0 pads to buckets (always so under XLA/TPU)."
    )
    eval_batch_size: int = _field(64, "Global batch for dev loss and decoding.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The deep attention seq2seq (GNMT-style encoder, attention LSTM decoder)."""

    embedding_dim: int = _field(256, "Width of source and target embeddings.")
    units: int = _field(256, "LSTM units per layer (each direction of the bidirectional layer).")
    encoder_layers: int = _field(2, "Encoder layers; the first one is bidirectional.")
    decoder_layers: int = _field(2, "Decoder LSTM layers under the attention wrapper.")
    residual_from: int = _field(2, "1-based encoder/decoder layer from which residuals are added.")
    attention: str = _field("luong", "'luong' (scaled) or 'bahdanau' (normalised).")
    dropout: float = _field(0.0, "Dropout on embeddings and between layers while training.")
    layer_norm: bool = _field(False, "Use layer-normalised LSTM cells.")
    fused_decoder: bool = _field(
        True,
        "Teacher-forced training runs the decoder as one kernel with a hand-written backward "
        "pass (same maths and weights as TFA's AttentionWrapper loop); applies to Luong "
        "attention without layer norm, with or without parallel scheduled sampling. False "
        "forces TFA's loop.",
    )
    weight_norm: bool = _field(
        False,
        "Weight-normalise the attention layer (tfa.layers.WeightNormalization); never the "
        "output projection, where it slowed learning (README, *Weight normalisation*).",
    )
    encoder_lstm: str = _field(
        "auto",
        "Encoder LSTM implementation, same weights and maths: 'fused' (hand-written loops; CPU, "
        "XLA, TPU), 'keras' (tf.keras.layers.LSTM, which runs cuDNN on a GPU in graph mode), "
        "'auto' (keras on GPUs without XLA, layer norm or bfloat16; else fused).",
    )
    tie_embeddings: bool = _field(False, "Share target embedding and softmax weights.")
    label_smoothing: float = _field(0.1, "Label smoothing of the training loss.")
    beam_width: int = _field(4, "Beam width at evaluation and export.")
    length_penalty: float = _field(0.6, "GNMT length penalty weight (0 disables).")
    coverage_penalty: float = _field(0.0, "GNMT coverage penalty weight (0 disables).")
    max_decode_length: int = _field(80, "Longest translation in pieces.")
    export_precision: str = _field(
        "auto",
        "Matrix products of the exported SavedModel's search: 'auto' (a float32 "
        "serving_default and, where the fused search covers the model, a serving_bfloat16 "
        "signature; nmt-translate and nmt-evaluate take bfloat16 where the host computes it "
        "natively: CPUs with AVX512-BF16 or AMX, GPUs of compute capability 8.0 and up; the "
        "weights saved once), 'float32' (serving_default alone, full speed on any machine) or "
        "'mixed_bfloat16' (serving_default alone in bfloat16 products, float32 states and "
        "scores; emulated and slower where bfloat16 is not native; needs the fused search: "
        "Luong attention, no layer norm).",
    )
    decode_slots: int = _field(
        32,
        "Most sentences a fused search decodes at once (each with its beams); the others of "
        "the same call wait, and each takes the place of one that ends.",
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, scheduled sampling, checkpointing and evaluation cadence."""

    train_steps: int = _field(2000, "Total optimizer steps.")
    max_train_seconds: float = _field(0.0, "Stop training after this wall time (0: no limit).")
    learning_rate: float = _field(2e-3, "Peak Adam learning rate.")
    warmup_steps: int = _field(200, "Linear warmup steps.")
    decay: str = _field("rsqrt", "'constant' or 'rsqrt' (inverse square root after warmup).")
    clip_norm: float = _field(5.0, "Clip gradients by this global norm (0 disables).")
    sampling_schedule: str = _field(
        "constant", "Scheduled sampling: constant, linear, exponential or inverse_sigmoid."
    )
    sampling_probability: float = _field(0.0, "Constant schedule's probability / others' cap.")
    sampling_k: float = _field(1000.0, "Schedule speed (steps for linear; k for the others).")
    sampling_mode: str = _field(
        "parallel",
        "How sampled inputs are made: 'parallel' (a teacher-forced pass predicts every "
        "position, the trained pass reads the mix; fused kernels) or 'sequential' (TFA's "
        "decoder loop feeds each step its previous output).",
    )
    seed: int = _field(42, "Seed of every random source in training.")
    steps_per_loop: int = _field(50, "Steps run inside one tf.function call between logs.")
    checkpoint_every: int = _field(500, "Save a checkpoint every this many steps.")
    keep_checkpoints: int = _field(3, "Checkpoints kept on disk.")
    eval_every: int = _field(1000, "Evaluate dev loss and BLEU every this many steps.")
    eval_sentences: int = _field(200, "Dev sentences decoded for BLEU during training.")
    eval_loss_sentences: int = _field(
        2000, "Dev pairs scored for loss and perplexity at each evaluation (-1: the whole split)."
    )
    test_sentences: int = _field(
        -1, "Test sentences decoded and scored at the end of training (-1: the whole split)."
    )
    jit_compile: bool = _field(False, "Compile the train step with XLA (TPU: always on).")
    nonfinite: str = _field("skip", "On a NaN/Inf loss or gradient: 'skip' the update or 'stop'.")
    mixed_precision: str = _field(
        "auto",
        "'auto' (mixed_bfloat16 on a TPU, an Ampere+ GPU or a CPU with native bfloat16; else "
        "float32), 'float32' (also ''), 'mixed_bfloat16' or 'mixed_float16'.",
    )


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where the job runs; nothing here changes the maths."""

    strategy: str = _field("auto", "auto, tpu, multi_worker_mirrored, mirrored or one_device.")
    tpu: str = _field("", "TPU name or 'local' for a TPU VM (strategy=tpu).")
    cpu_replicas: int = _field(
        0,
        "Replicas on a host without accelerators (strategy=auto), each with an equal share of "
        "the cores: 0 = 2 when the host has 2+ cores, the batch splits evenly and XLA is off, "
        "else 1.",
    )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run, saved next to its checkpoints."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    runtime: RuntimeConfig = RuntimeConfig()


_REGISTRY: dict[str, Callable[[], ExperimentConfig]] = {}


def register(name: str):
    """Registers a zero-argument factory of an `ExperimentConfig` under `name`."""

    def decorator(factory):
        if name in _REGISTRY:
            raise ConfigError(f"Experiment {name!r} is registered twice.")
        _REGISTRY[name] = factory
        return factory

    return decorator


def registered_experiments() -> list[str]:
    return sorted(_REGISTRY)


def get_experiment(name: str) -> ExperimentConfig:
    if name not in _REGISTRY:
        raise ConfigError(
            f"Unknown experiment {name!r}; known: {', '.join(registered_experiments())}."
        )
    return _REGISTRY[name]()


@register("attention_seq2seq/base")
def _base() -> ExperimentConfig:
    """The reference model: 256 units, 2+2 layers, Luong attention, batch 64."""
    return ExperimentConfig()


@register("attention_seq2seq/tiny")
def _tiny() -> ExperimentConfig:
    """A seconds-scale model for tests; same code paths as the base model."""
    return ExperimentConfig(
        data=DataConfig(bucket_boundaries=(8, 16, 40), max_length=32, batch_size=16),
        model=ModelConfig(embedding_dim=32, units=32, beam_width=2, max_decode_length=40),
        train=TrainConfig(
            mixed_precision="float32",  # the same maths and speed on every test machine
            train_steps=20,
            warmup_steps=5,
            steps_per_loop=5,
            checkpoint_every=10,
            eval_every=20,
            eval_sentences=16,
        ),
    )


def to_dict(config: Any) -> dict:
    """The config as plain nested dicts and lists (YAML/JSON friendly)."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def to_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_dict(data: Mapping) -> ExperimentConfig:
    """Builds a config from nested mappings, e.g. a saved config.yaml."""
    return validate(merge(ExperimentConfig(), data, where="dict"))


def merge(config, updates: Mapping, where: str):
    """Returns `config` with `updates` (nested mapping) applied; unknown keys are errors."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes = {}
    for key, value in updates.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown field {key!r} in {type(config).__name__}; "
                f"known: {', '.join(sorted(fields))}."
            )
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {key!r} must be a mapping, got {value!r}.")
            changes[key] = merge(current, value, f"{where}:{key}")
        else:
            changes[key] = _coerce(value, hints[key], f"{where}:{key}")
    return dataclasses.replace(config, **changes)


def _coerce(value, hint, where: str):
    """Converts YAML/override values to the field's type, refusing lossy or odd conversions."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(";", " ").split() if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}.")
        (item_type, _) = typing.get_args(hint)
        return tuple(_coerce(v, item_type, where) for v in value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}.")
        return value
    try:
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint is float:
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}.") from None
    return str(value)


def parse_overrides(text: str) -> dict:
    """'train.learning_rate=0.01,model.units=128' -> nested dict (lists: 'a=8;16;32')."""
    result: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        if "=" not in item:
            raise ConfigError(
                f"--params_override: {item!r} is not of the form section.field=value."
            )
        path, value = (s.strip() for s in item.split("=", 1))
        node = result
        *parents, leaf = path.split(".")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value) if value else value
    return result


def load_yaml_file(path: str) -> dict:
    """Reads a YAML config from any filesystem TensorFlow knows (local, gs://, ...)."""
    if not tf.io.gfile.exists(path):
        raise ConfigError(f"Config file {path} does not exist.")
    with tf.io.gfile.GFile(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections.")
    return data


def build_config(
    experiment: str, config_file: str = "", params_override: str = ""
) -> ExperimentConfig:
    """Registered defaults -> YAML file -> overrides -> validate. The one way configs are made."""
    config = get_experiment(experiment)
    if config_file:
        config = merge(config, load_yaml_file(config_file), where=config_file)
    if params_override:
        config = merge(config, parse_overrides(params_override), where="--params_override")
    return validate(config)


_CHOICES = {
    ("model", "attention"): ("luong", "bahdanau"),
    ("model", "encoder_lstm"): ("auto", "fused", "keras"),
    ("train", "decay"): ("constant", "rsqrt"),
    ("train", "sampling_schedule"): ("constant", "linear", "exponential", "inverse_sigmoid"),
    ("train", "mixed_precision"): ("auto", "float32", "", "mixed_bfloat16", "mixed_float16"),
    ("model", "export_precision"): ("auto", "float32", "mixed_bfloat16"),
    ("train", "sampling_mode"): ("parallel", "sequential"),
    ("train", "nonfinite"): ("skip", "stop"),
    ("runtime", "strategy"): ("auto", "tpu", "multi_worker_mirrored", "mirrored", "one_device"),
}


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Checks cross-field rules; returns the config unchanged or raises ConfigError."""
    problems = []
    for (section, name), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            problems.append(f"{section}.{name}={value!r} is not one of {allowed}")
    data, model, train = config.data, config.model, config.train
    boundaries = data.bucket_boundaries
    if not boundaries or list(boundaries) != sorted(set(boundaries)):
        problems.append("data.bucket_boundaries must be strictly increasing and non-empty")
    elif boundaries[-1] < data.max_length + 1:
        problems.append(
            f"data.bucket_boundaries[-1]={boundaries[-1]} must be >= data.max_length+1 "
            f"({data.max_length + 1}: pieces plus BOS/EOS)"
        )
    positive = {
        "data.batch_size": data.batch_size,
        "data.max_length": data.max_length,
        "model.units": model.units,
        "model.embedding_dim": model.embedding_dim,
        "model.encoder_layers": model.encoder_layers,
        "model.decoder_layers": model.decoder_layers,
        "model.beam_width": model.beam_width,
        "model.decode_slots": model.decode_slots,
        "train.train_steps": train.train_steps,
        "train.steps_per_loop": train.steps_per_loop,
        "train.checkpoint_every": train.checkpoint_every,
        "train.eval_every": train.eval_every,
    }
    problems += [
        f"{name} must be positive, got {value}" for name, value in positive.items() if value <= 0
    ]
    if not 0.0 <= train.sampling_probability <= 1.0:
        problems.append("train.sampling_probability must be in [0, 1]")
    if not 0.0 <= model.dropout < 1.0:
        problems.append("model.dropout must be in [0, 1)")
    if not 0.0 <= model.label_smoothing < 1.0:
        problems.append("model.label_smoothing must be in [0, 1)")
    if config.runtime.cpu_replicas < 0:
        problems.append("runtime.cpu_replicas must be >= 0 (0: automatic)")
    elif config.runtime.cpu_replicas > 1 and train.jit_compile:
        problems.append(
            "runtime.cpu_replicas > 1 cannot run with train.jit_compile (XLA needs every "
            "variable of the step on one device); use 0 or 1"
        )
    elif (
        config.runtime.cpu_replicas > 1
        and not data.per_replica_batch_size
        and data.batch_size % config.runtime.cpu_replicas
    ):
        problems.append(
            f"data.batch_size={data.batch_size} must be divisible by "
            f"runtime.cpu_replicas={config.runtime.cpu_replicas}"
        )
    for name in ("eval_loss_sentences", "test_sentences"):
        if getattr(train, name) == 0 or getattr(train, name) < -1:
            problems.append(f"train.{name} must be positive or -1 (all)")
    if data.sort_pool < 0:
        problems.append("data.sort_pool must be >= 0")
    if data.per_replica_batch_size < 0:
        problems.append("data.per_replica_batch_size must be >= 0 (0: use data.batch_size)")
    if model.encoder_lstm == "keras" and (model.layer_norm or train.jit_compile):
        problems.append(
            "model.encoder_lstm='keras' needs model.layer_norm=false (cuDNN has no layer norm) "
            "and train.jit_compile=false (a Keras LSTM inside XLA recompiles every step; README, "
            "\"Known traps\"); use 'fused' or 'auto'"
        )
    if train.nonfinite == "stop" and train.mixed_precision == "mixed_float16":
        problems.append(
            "train.nonfinite=stop cannot run with train.mixed_precision=mixed_float16: dynamic "
            "loss scaling skips the updates that overflow while the scale settles, so the run "
            "would stop at the first; use train.nonfinite=skip (skipped updates are counted)"
        )
    if train.clip_norm < 0:
        problems.append("train.clip_norm must be >= 0")
    if train.sampling_schedule != "constant" and train.sampling_k <= (
        1.0 if train.sampling_schedule == "exponential" else 0.0
    ):
        problems.append("train.sampling_k must be > 0 (exponential: > 1)")
    if problems:
        raise ConfigError("Invalid config:\n  " + "\n  ".join(problems))
    return config


# Fields a resumed run may change without breaking exact continuation: where things are
# written, how long to run, how often to log, save and evaluate, which devices and kernels
# compute the same maths, and how a process splits its batch among replicas (the batch at a
# step depends on the number of workers, not replicas).
RESUME_SAFE_FIELDS = frozenset(
    {
        "data.data_dir",
        "data.eval_batch_size",
        "train.train_steps",
        "train.max_train_seconds",
        "train.steps_per_loop",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.eval_every",
        "train.eval_sentences",
        "train.eval_loss_sentences",
        "train.test_sentences",
        "model.encoder_lstm",
        # What the export holds, not what trains or evaluates (runs saved before 'auto' was
        # the default name 'float32').
        "model.export_precision",
        "runtime.strategy",
        "runtime.cpu_replicas",
        "runtime.tpu",
    }
)


def resume_conflicts(saved: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """The diff lines of fields that may not change when resuming from a checkpoint."""
    return [line for line in diff(saved, new) if line.split(":")[0] not in RESUME_SAFE_FIELDS]


def diff(old: ExperimentConfig, new: ExperimentConfig) -> list[str]:
    """Lines 'section.field: old -> new' for every field that differs."""
    a, b = to_dict(old), to_dict(new)
    return [
        f"{section}.{key}: {a[section][key]!r} -> {b[section][key]!r}"
        for section in a
        for key in a[section]
        if a[section][key] != b[section][key]
    ]
