"""What data-parallel training costs in all-reduce for the reference model, measured and projected.

Counts the gradient bytes one step all-reduces (every trainable variable; embedding gradients are
reduced dense), times real all-reduces of exactly those tensors here (two replicas: two logical
CPU devices in one process, and two worker processes over loopback gRPC), and projects the
ring all-reduce time for 8, 64 and 256 replicas from link bandwidth and latency.

  .venv/bin/python bench/allreduce.py [--data_dir runs/main/data] [--repeats 20]
"""

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

# (replicas, link, bytes/s on the slowest ring link, per-hop latency s): assumptions, printed.
SCENARIOS = (
    (8, "8 GPUs in one host, NVLink (~150 GB/s)", 150e9, 5e-6),
    (64, "8 hosts x 8 GPUs, 100 Gb/s RDMA between hosts (~11 GB/s)", 11e9, 15e-6),
    (256, "32 hosts x 8 GPUs, 100 Gb/s RDMA between hosts (~11 GB/s)", 11e9, 15e-6),
    (8, "TPU v4-16 slice, ICI (~45 GB/s per link)", 45e9, 3e-6),
    (64, "TPU v4-128 slice, ICI (~45 GB/s per link)", 45e9, 3e-6),
    (256, "TPU v4-512 slice, ICI (~45 GB/s per link)", 45e9, 3e-6),
)


def gradient_shapes(data_dir: str) -> list[tuple[str, list[int]]]:
    import tensorflow as tf

    from pipeline import config, paths
    from pipeline import metadata as metadata_lib
    from trainer import task

    cfg = config.get_experiment("attention_seq2seq/base")
    if os.path.exists(os.path.join(data_dir, "metadata.json")):
        meta = metadata_lib.read_metadata(paths.DatasetLayout(data_dir))
    else:
        meta = {"vocab": {"source": {"size": 8000}, "target": {"size": 8000}}}
    seq2seq = task.build_model(cfg.model, meta)
    ids = tf.constant([[4, 3]])
    lengths = tf.constant([2])
    seq2seq(
        {"source_ids": ids, "source_lengths": lengths, "target_in": ids, "target_lengths": lengths}
    )
    seq2seq.projection(tf.zeros([1, cfg.model.units]))
    return [(v.name, v.shape.as_list()) for v in seq2seq.trainable_variables]


def ring_seconds(num_bytes: float, replicas: int, bandwidth: float, latency: float) -> float:
    """Ring all-reduce: 2(n-1)/n of the data over each link, 2(n-1) latency-bound hops."""
    return 2 * (replicas - 1) / replicas * num_bytes / bandwidth + 2 * (replicas - 1) * latency


def _time_allreduce(strategy, shapes, repeats: int) -> float:
    import tensorflow as tf

    with strategy.scope():
        # Variables, not constants: the graph optimiser would fold a reduction of constants.
        grads = [tf.Variable(tf.ones(shape)) for _, shape in shapes]

    @tf.function
    def step():
        context = tf.distribute.get_replica_context()
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [g * 1.0 for g in grads])
        # Read one element of every result so no reduction can be pruned from the graph.
        return tf.add_n([tf.reshape(t, [-1])[0] for t in reduced])

    strategy.run(step)  # trace and warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        strategy.experimental_local_results(strategy.run(step))[0].numpy()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_in_process(shapes, repeats: int) -> float:
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return _time_allreduce(strategy, shapes, repeats)


def measure_worker(shapes, repeats: int) -> float:
    import tensorflow as tf

    return _time_allreduce(tf.distribute.MultiWorkerMirroredStrategy(), shapes, repeats)


def measure_two_processes(shapes_path: str, repeats: int) -> float:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    workers = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3"}
        argv = [sys.executable, __file__, f"--worker_shapes={shapes_path}", f"--repeats={repeats}"]
        workers.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    if any(w.returncode for w in workers):
        raise SystemExit("a worker of the two-process measurement failed")
    return float(outputs[0].split()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=common.DEFAULT_DATA_DIR)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--worker_shapes", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_shapes:
        with open(args.worker_shapes) as f:
            print(measure_worker(json.load(f), args.repeats))
        return
    import tensorflow as tf

    # Two logical CPU devices for the in-process measurement; must precede any other TF op.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    shapes = gradient_shapes(args.data_dir)
    params = sum(math.prod(s) for _, s in shapes)
    num_bytes = 4 * params
    os.makedirs(common.RESULTS, exist_ok=True)
    shapes_path = os.path.join(common.RESULTS, "gradient_shapes.json")
    with open(shapes_path, "w") as f:
        json.dump(shapes, f)
    measured = {
        "2 logical CPU devices, one process": measure_in_process(shapes, args.repeats),
        "2 worker processes, loopback gRPC": measure_two_processes(shapes_path, args.repeats),
    }
    print(f"reference model: {params:,} trainable parameters, {num_bytes / 1e6:.1f} MB of float32")
    print("gradients all-reduced per step (embedding gradients reduced dense)\n")
    rows = [{"setup": k, "seconds_per_allreduce": round(v, 4)} for k, v in measured.items()]
    common.print_table(rows, ["setup", "seconds_per_allreduce"])
    print()
    projections = []
    for n, name, bandwidth, latency in SCENARIOS:
        seconds = ring_seconds(num_bytes, n, bandwidth, latency)
        projections.append({"replicas": n, "setup": name, "ms_per_step": round(seconds * 1e3, 2)})
    common.print_table(projections, ["replicas", "setup", "ms_per_step"])
    path = common.write_json(
        "allreduce",
        {
            "parameters": params,
            "bytes_per_step": num_bytes,
            "measured_seconds": measured,
            "projected": projections,
        },
    )
    print("written", path)


if __name__ == "__main__":
    main()
