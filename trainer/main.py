"""Entry point of the trainer: `nmt-train` / `python -m trainer.main`.

Flags are defined here and nowhere else. They build one frozen `ExperimentConfig`; everything
below receives its piece of that config.
"""

import json
import os
import sys

from pipeline import console

# Before TensorFlow is imported (see pipeline/console.py); the log goes to MODEL_DIR/logs.
console.start_if_program("nmt-train", __name__, run_dir_flag="--model_dir")

import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from pipeline import config as config_lib  # noqa: E402
from pipeline import metadata as metadata_lib  # noqa: E402
from pipeline import paths  # noqa: E402
from trainer import (  # noqa: E402
    actions,
    averaging,
    checkpointing,
    distribution,
    export,
    plots,
    preemption,
    train_loop,
)

_EXPERIMENT = flags.DEFINE_string(
    "experiment", "attention_seq2seq/base", "Registered experiment to start from."
)
_CONFIG_FILE = flags.DEFINE_string("config_file", "", "YAML file overriding the experiment.")
_PARAMS_OVERRIDE = flags.DEFINE_string(
    "params_override", "", "Comma-separated section.field=value overrides, applied last."
)
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Preprocessed dataset (sets data.data_dir).")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Run directory: checkpoints, summaries, export."
)
_STRATEGY = flags.DEFINE_enum(
    "strategy",
    None,
    ["auto", "tpu", "multi_worker_mirrored", "mirrored", "one_device"],
    "Distribution strategy (sets runtime.strategy).",
)
_TPU = flags.DEFINE_string("tpu", None, "TPU name, or 'local' on a TPU VM (sets runtime.tpu).")
_RESTART = flags.DEFINE_bool("restart", False, "Delete existing checkpoints instead of resuming.")
_DETERMINISTIC = flags.DEFINE_bool("deterministic", False, "Enable TF op determinism.")
_EXPORT = flags.DEFINE_bool(
    "export", True, "Export a SavedModel of the best checkpoint at the end."
)
_TEST = flags.DEFINE_bool("evaluate_test", True, "Score the test split at the end.")
_AVERAGE_LAST_N = flags.DEFINE_integer(
    "average_last_n",
    0,
    "Test and export the mean weights of the last N checkpoints instead of the best one.",
    lower_bound=0,
)
flags.mark_flag_as_required("model_dir")

TEST_RESULTS = "test_results.json"
TEST_TRANSLATIONS = "test_translations.txt"


def _flag_overrides() -> dict:
    overrides: dict = {}
    if _DATA_DIR.value:
        overrides.setdefault("data", {})["data_dir"] = _DATA_DIR.value
    if _STRATEGY.value:
        overrides.setdefault("runtime", {})["strategy"] = _STRATEGY.value
    if _TPU.value is not None:
        overrides.setdefault("runtime", {})["tpu"] = _TPU.value
    return overrides


def build_config_from_flags() -> config_lib.ExperimentConfig:
    """Experiment -> --config_file -> --params_override -> explicit flags -> validate."""
    try:
        cfg = config_lib.build_config(_EXPERIMENT.value, _CONFIG_FILE.value, _PARAMS_OVERRIDE.value)
        cfg = config_lib.validate(config_lib.merge(cfg, _flag_overrides(), where="flags"))
    except (config_lib.ConfigError, OSError) as e:
        raise app.UsageError(str(e)) from None
    if not cfg.data.data_dir:
        raise app.UsageError("Set --data_dir (or data.data_dir in the config).")
    return cfg


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cfg = build_config_from_flags()
    strategy = distribution.build_strategy(cfg.runtime, distribution.cpu_replicas(cfg))
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(cfg.train.seed)
    layout = paths.RunLayout(_MODEL_DIR.value)
    if _RESTART.value and distribution.is_chief(strategy):
        for path in (layout.checkpoints, layout.best_checkpoint):
            if tf.io.gfile.exists(path):
                logging.info("--restart: deleting %s", path)
                tf.io.gfile.rmtree(path)
    try:
        trainer = train_loop.Trainer(cfg, layout.root, strategy)
    except (config_lib.ConfigError, metadata_lib.DatasetError) as e:
        raise app.UsageError(str(e)) from None
    stop = preemption.StopSignal()
    try:
        trainer.train(stop_requested=stop)
    except config_lib.ConfigError as e:
        raise app.UsageError(str(e)) from None
    except (actions.NonFiniteLossError, checkpointing.CheckpointError) as e:
        logging.error("%s", e)
        sys.exit(1)
    if trainer.preempted:  # on this worker or another: none goes on to the final evaluation
        trainer.cleanup()
        sys.exit(preemption.EXIT_CODE)
    _finish(trainer, strategy, layout)


def _finish(trainer, strategy, layout):
    """Best (or averaged) weights -> test scores -> SavedModel -> plots (chief writes)."""
    if _AVERAGE_LAST_N.value:
        averaging.average_checkpoints(
            trainer.saved_checkpoints()[-_AVERAGE_LAST_N.value :], trainer.state
        )
    elif trainer.restore_best():
        logging.info(
            "Using the best dev-BLEU weights (BLEU %.2f).", float(trainer.best_bleu.numpy())
        )
    results = trainer.evaluate("test", trainer.cfg.train.test_sentences) if _TEST.value else {}
    if distribution.is_chief(strategy):
        if _TEST.value:
            _write_test_results(results, layout)
        if _EXPORT.value:
            path = export.export_saved_model(trainer.state, layout.export)
            logging.info("Exported SavedModel to %s", path)
        logging.info("Plots: %s", ", ".join(plots.save_run_plots(trainer.state)))
    trainer.cleanup()


def _write_test_results(results: dict, layout):
    """Scores to test_results.json; the translations, one per line in split order, beside it."""
    hypotheses = results.pop("hypotheses")
    with tf.io.gfile.GFile(os.path.join(layout.root, TEST_RESULTS), "w") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
    with tf.io.gfile.GFile(os.path.join(layout.root, TEST_TRANSLATIONS), "w") as f:
        f.write("".join(hypothesis + "\n" for hypothesis in hypotheses))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
