"""Where a training step's time goes, by subtraction: each stage timed cumulatively.

On the same cached batches of the bundled corpus (reference config, graph mode, float32 unless
--params_override says otherwise) it times: the input pipeline alone; the encoder forward; the
encoder and decoder loop forward (no projection); the whole forward with the projection and loss;
forward and backward; and the full step (all-reduce, clipping, Adam). The differences are the
cost of each stage. Then the full step again with scheduled sampling at p = 0.25 in each mode
(`train.sampling_mode`), as a ratio to the teacher-forced step, in wall time and in this
process's CPU time: on a busy machine only the CPU-time ratio means much. Run it alone.

  .venv/bin/python bench/profile_step.py [--batches 40] [--params_override ...]
"""

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402


def _time(fn, batches, repeats=3) -> float:
    """Median over repeats of the mean seconds per batch (one untimed pass traces)."""
    for batch in batches[:3]:
        fn(batch)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            out = fn(batch)
        float(out)  # wait for the last step
        runs.append((time.perf_counter() - started) / len(batches))
    return statistics.median(runs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--params_override", default="")
    args = parser.parse_args()
    data_dir = common.ensure_dataset(args.data_dir)

    import tensorflow as tf

    from pipeline import config
    from trainer import data, train_loop

    overrides = f"data.data_dir={data_dir},model.dropout=0.0"
    if args.params_override:
        overrides += "," + args.params_override
    overrides = f"train.mixed_precision=float32,{overrides}"  # --params_override may change it
    cfg = config.build_config("attention_seq2seq/base", params_override=overrides)
    trainer = train_loop.Trainer(cfg, "/tmp/bench-profile-unused", tf.distribute.get_strategy())
    dataset = data.make_train_dataset(cfg.data, cfg.train.seed)

    started = time.perf_counter()
    batches = list(dataset.take(args.batches))
    input_seconds = (time.perf_counter() - started) / args.batches
    model, task = trainer.model, trainer.task
    step = tf.constant(0, tf.int64)
    tokens = statistics.mean(
        float(tf.reduce_sum(b[data.SOURCE_LENGTHS]) + tf.reduce_sum(b[data.TARGET_LENGTHS]))
        for b in batches
    )

    @tf.function(reduce_retracing=True)
    def encoder(batch):
        memory, _ = model.encoder(batch[data.SOURCE_IDS], batch[data.SOURCE_LENGTHS], [0, 0])
        return tf.reduce_sum(memory)

    @tf.function(reduce_retracing=True)
    def decoder_loop(batch):
        inputs = {k: batch[k] for k in (data.SOURCE_IDS, data.SOURCE_LENGTHS)}
        inputs.update({k: batch[k] for k in (data.TARGET_IN, data.TARGET_LENGTHS)})
        return tf.reduce_sum(model(inputs, training=True))

    @tf.function(reduce_retracing=True)
    def forward(batch):
        return task.loss(batch, step, training=True)[0]

    @tf.function(reduce_retracing=True)
    def forward_backward(batch):
        with tf.GradientTape() as tape:
            loss = task.loss(batch, step, training=True)[0]
        grads = tape.gradient(loss, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g)) for g in grads])

    @tf.function(reduce_retracing=True)
    def full_step(batch):
        return trainer.strategy.run(task.train_step, args=(batch, step))["loss_sum"]

    cumulative = [
        ("encoder forward", _time(encoder, batches)),
        ("+ decoder loop forward (attention, no projection)", _time(decoder_loop, batches)),
        ("+ projection and loss", _time(forward, batches)),
        ("+ backward", _time(forward_backward, batches)),
        ("+ all-reduce, clipping, Adam", _time(full_step, batches)),
    ]
    rows = [{"stage": "input pipeline (not overlapped here)", "ms": round(input_seconds * 1e3, 1)}]
    previous = 0.0
    total = cumulative[-1][1]
    for name, seconds in cumulative:
        rows.append(
            {
                "stage": name,
                "ms": round((seconds - previous) * 1e3, 1),
                "share_of_step": f"{100 * (seconds - previous) / total:.0f}%",
            }
        )
        previous = seconds
    common.print_table(rows, ["stage", "ms", "share_of_step"])
    print(f"step {total * 1e3:.0f} ms for {tokens:.0f} tokens: {tokens / total:.0f} tokens/s")
    sampling_rows = _time_sampling_modes(cfg, trainer, batches)
    print()
    common.print_table(sampling_rows, ["step", "ms", "vs_forced", "cpu_ms", "cpu_vs_forced"])
    payload = {"stages": rows, "tokens": tokens, "sampling": sampling_rows}
    print("written", common.write_json("profile_step", payload))


def _time_sampling_modes(cfg, trainer, batches) -> list[dict]:
    """The full step without and with scheduled sampling (p = 0.25), interleaved."""
    import tensorflow as tf

    from trainer import task as task_lib

    step = tf.constant(0, tf.int64)
    steps = {}
    for name, changes in [
        ("teacher forcing", {}),
        ("parallel sampling", {"sampling_mode": "parallel"}),
        ("sequential sampling", {"sampling_mode": "sequential"}),
    ]:
        if changes:  # a constant p, whatever schedule --params_override set
            changes.update(sampling_schedule="constant", sampling_probability=0.25)
        train = dataclasses.replace(cfg.train, **changes)
        task = task_lib.TranslationTask(
            dataclasses.replace(cfg, train=train), trainer.model, trainer.optimizer
        )
        steps[name] = tf.function(
            lambda batch, task=task: trainer.strategy.run(task.train_step, args=(batch, step))[
                "loss_sum"
            ],
            reduce_retracing=True,
        )
    for fn in steps.values():  # traces
        for batch in batches[:3]:
            fn(batch)
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(3):  # rounds of each mode in turn, so load changes hit all of them alike
        for name, fn in steps.items():
            wall_s, cpu_s = _time_both(fn, batches)
            wall[name].append(wall_s)
            cpu[name].append(cpu_s)
    forced_wall = statistics.median(wall["teacher forcing"])
    forced_cpu = statistics.median(cpu["teacher forcing"])
    return [
        {
            "step": name,
            "ms": round(statistics.median(wall[name]) * 1e3, 1),
            "vs_forced": round(forced_wall / statistics.median(wall[name]), 3),
            "cpu_ms": round(statistics.median(cpu[name]) * 1e3, 1),
            "cpu_vs_forced": round(forced_cpu / statistics.median(cpu[name]), 3),
        }
        for name in steps
    ]


def _time_both(fn, batches) -> tuple[float, float]:
    """Mean wall and process CPU seconds per batch over one pass."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for batch in batches:
        out = fn(batch)
    float(out)
    count = len(batches)
    return (time.perf_counter() - started) / count, (time.process_time() - cpu_started) / count


if __name__ == "__main__":
    main()
