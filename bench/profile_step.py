"""Where a training step's time goes, by subtraction: each stage timed cumulatively.

On the same cached batches of the bundled corpus (reference config, graph mode, float32 unless
--params_override says otherwise) it times: the input pipeline alone; the encoder forward; the
encoder and decoder loop forward (no projection); the whole forward with the projection and loss;
forward and backward; and the full step (all-reduce, clipping, Adam). The differences are the
cost of each stage. Run it alone on the machine.

  .venv/bin/python bench/profile_step.py [--batches 40] [--params_override ...]
"""

import argparse
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
    print("written", common.write_json("profile_step", {"stages": rows, "tokens": tokens}))


if __name__ == "__main__":
    main()
