"""tf.data input: shards -> parse -> add BOS/EOS -> batch by length -> pad -> prefetch.

Training input is sharded: each input pipeline (one per worker) reads and parses only its share
of the records (`records.PipelineShare`) and forms `batch_size / pipelines` rows per step, split
among its replicas. So the batch at a step is a pure function of the seed and the number of input
pipelines; with the same number, a run is bit-identical however often it is stopped and resumed.
Every batch carries its `input_position.InputPosition`, from which a restart rebuilds the stream
in constant time.

Two ways to form batches. Graph mode (the CPU/GPU default) sorts pools of examples by target and
source length and pads each batch to its own longest side: the least padding, since every padded
position still costs the RNNs work. A jit-compiled step (XLA; always on a TPU) instead needs few,
static shapes, so there each batch is padded to the smallest of `bucket_boundaries` that holds it
and has exactly the batch size: one XLA compile per bucket, and short batches stay short.
"""

import tensorflow as tf

from pipeline import config as config_lib
from pipeline import features, paths
from pipeline import vocab as vocab_lib
from trainer import input_position, records

SOURCE_IDS = "source_ids"
SOURCE_LENGTHS = "source_lengths"
TARGET_IN = "target_in"
TARGET_OUT = "target_out"
TARGET_LENGTHS = "target_lengths"
# Training batches only: the batch's `input_position.InputPosition` as an int64 vector.
INPUT_POSITION = "input_position"
# Per example, inside the input pipeline: (epoch, index) of the record it was parsed from.
_RECORD_POSITION = "record_position"


# Records parsed per call: map functions per record cost 9x the CPU (8.4 against 0.93 ms per
# 64-pair batch, one thread), CPU that the training replicas on the same cores then lack.
_PARSE_BATCH = 256


def _column(ragged: tf.RaggedTensor, token: int) -> tf.RaggedTensor:
    """One `token` per row of `ragged`, to concatenate with it."""
    column = tf.fill([ragged.nrows(), 1], token)
    return tf.RaggedTensor.from_tensor(column, row_splits_dtype=ragged.row_splits.dtype)


def _row_lengths(ragged: tf.RaggedTensor) -> tf.Tensor:
    return tf.cast(ragged.row_lengths(), tf.int32)


def _to_model_inputs(parsed):
    """[N, None] ragged ids -> model inputs (ragged id rows, [N] lengths).

    Source gets EOS; the decoder reads BOS+target and predicts target+EOS.
    """
    target = parsed[features.TARGET_IDS]
    source = tf.concat([parsed[features.SOURCE_IDS], _column(target, vocab_lib.EOS_ID)], axis=1)
    target_in = tf.concat([_column(target, vocab_lib.BOS_ID), target], axis=1)
    return {
        SOURCE_IDS: source,
        SOURCE_LENGTHS: _row_lengths(source),
        TARGET_IN: target_in,
        TARGET_OUT: tf.concat([target, _column(target, vocab_lib.EOS_ID)], axis=1),
        TARGET_LENGTHS: _row_lengths(target_in),
    }


def source_batch(pieces: tf.RaggedTensor):
    """Ragged source pieces -> (ids [B, S] with EOS appended and PAD after, lengths [B]).

    The encoder input as training builds it (`_to_model_inputs`), for sentences tokenized at
    inference: export, attention pictures.
    """
    pieces = tf.concat([pieces, _column(pieces, vocab_lib.EOS_ID)], axis=1)
    return pieces.to_tensor(default_value=vocab_lib.PAD_ID), _row_lengths(pieces)


def _examples(stream, longest: int, with_text: bool = False):
    """Serialised records -> one model-input element per pair whose sides fit `longest`, in order.

    `stream` holds serialised strings, or (training) `records.PipelineShare` elements, whose
    (epoch, index) each example then carries along as `_RECORD_POSITION`. Id fields come out as
    rank-1 ragged elements: `batch` stacks them into ragged batches (natively, no function per
    element) that `_pad` makes dense.
    """

    def prepare(chunk):
        carried = {}
        if isinstance(chunk, dict):
            carried[_RECORD_POSITION] = tf.stack([chunk[records.EPOCH], chunk[records.INDEX]], 1)
            chunk = chunk[records.SERIALIZED]
        parsed = features.parse_examples(chunk, with_text)
        inputs = {**_to_model_inputs(parsed), **carried}
        if with_text:
            for key in (features.SOURCE_TEXT, features.TARGET_TEXT):
                inputs[key] = parsed[key]
        fits = _fits(longest)(inputs)
        return {key: tf.ragged.boolean_mask(value, fits) for key, value in inputs.items()}

    chunks = stream.batch(_PARSE_BATCH)
    chunks = chunks.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return chunks.unbatch()


def _pad(batch, length=None):
    """Ragged id rows -> dense, PAD after each row, to `length` (default: the longest row)."""
    shape = None if length is None else tf.stack([-1, length])
    return {
        key: value.to_tensor(vocab_lib.PAD_ID, shape=shape)
        if isinstance(value, tf.RaggedTensor)
        else value
        for key, value in batch.items()
    }


def _fits(longest: int):
    """Whether both sides of an example (or of each in a batch) are at most `longest` long."""
    return lambda x: tf.maximum(x[SOURCE_LENGTHS], x[TARGET_LENGTHS]) <= longest


def bucket_and_pad(examples, boundaries, batch_size: int, drop_remainder: bool = True):
    """Batches of `batch_size` pairs of one length bucket, each padded to its bucket's boundary.

    A batch holds pairs whose longer side fits the same smallest boundary, so every batch has one
    of `len(boundaries)` shapes [batch_size, boundary]: an XLA step compiles once per bucket, not
    once per batch, and pays for its own bucket's length rather than the longest. With
    `drop_remainder` (training) the batch dimension is static in the element spec too, as XLA and
    TPUs need. Pairs longer than the last boundary are dropped (padding would cut them).
    """
    examples = examples.filter(_fits(boundaries[-1]))
    bounds = tf.constant(boundaries, tf.int32)

    def bucket_id(x):
        length = tf.maximum(x[SOURCE_LENGTHS], x[TARGET_LENGTHS])
        return tf.cast(tf.argmax(tf.cast(bounds >= length, tf.int32)), tf.int64)

    def batch_bucket(key, window):
        batches = window.batch(batch_size, drop_remainder)
        return batches.map(lambda batch: _pad(batch, tf.gather(bounds, key)))

    def static_batch(batch):  # group_by_window forgets the batch dimension the windows had
        return {k: tf.ensure_shape(v, [batch_size, *v.shape[1:]]) for k, v in batch.items()}

    batches = examples.group_by_window(bucket_id, batch_bucket, window_size=batch_size)
    return batches.map(static_batch) if drop_remainder else batches


def sort_pools_and_pad(
    examples, batch_size: int, pool_batches: int, seed: int, first_pool: int = 0
):
    """Batches of similar lengths, each padded only to its own longest source and target.

    Pools of `pool_batches` batches are sorted by the longer side, then the source (a stable
    sort, so the order stays a pure function of the seed), cut into batches, and the batches of
    each pool put in a random order keyed on (seed, pool number): every input pipeline numbers
    its pools alike, so at a step all pipelines take the same rank of their pools (similar
    lengths, so no replica waits for a much longer batch), and a stream restarted at a pool
    (`first_pool`) continues exactly. The source breaks ties: a source step costs the encoder's
    three LSTM passes a little more than a target step costs the decoder (padded work, simulated
    on the bundled corpus: 11.3% against 12.3% with target ties). Padding to bucket boundaries
    instead (fewer shapes) measured 11% slower with the fused kernels: every padded step costs
    the recurrences work, and graph mode does not recompile per shape.

    When the examples carry their record positions (training), each batch gets its
    `INPUT_POSITION` (without the pipeline): the pool's first record, the pool, the batch's rank.
    """
    pools = examples.batch(batch_size * pool_batches, drop_remainder=True)

    def sort_and_cut(pool_number, pool):
        """One pool -> its batches [pool_batches, batch_size, ...], padded to the pool's longest."""
        longer = tf.maximum(pool[SOURCE_LENGTHS], pool[TARGET_LENGTHS])
        order = tf.argsort(longer * 4096 + pool[SOURCE_LENGTHS], stable=True)
        shuffle_seed = tf.stack([tf.constant(seed, tf.int64), pool_number])
        batch_order = tf.argsort(tf.random.stateless_uniform([pool_batches], shuffle_seed))

        def cut(values):
            values = tf.gather(values, order)
            values = tf.reshape(
                values, tf.concat([[pool_batches, batch_size], tf.shape(values)[1:]], 0)
            )
            return tf.gather(values, batch_order)

        padded = _pad(pool)
        first_record = padded.pop(_RECORD_POSITION, None)
        batches = {key: cut(value) for key, value in padded.items()}
        if first_record is not None:
            batches[INPUT_POSITION] = tf.stack(
                [
                    tf.fill([pool_batches], first_record[0, 0]),
                    tf.fill([pool_batches], first_record[0, 1]),
                    tf.fill([pool_batches], pool_number),
                    tf.range(pool_batches, dtype=tf.int64),
                ],
                axis=1,
            )
        return batches

    def trim(batch):
        source, target = tf.reduce_max(batch[SOURCE_LENGTHS]), tf.reduce_max(batch[TARGET_LENGTHS])
        trimmed = dict(batch)
        trimmed[SOURCE_IDS] = batch[SOURCE_IDS][:, :source]
        for key in (TARGET_IN, TARGET_OUT):
            trimmed[key] = batch[key][:, :target]
        return trimmed

    return pools.enumerate(first_pool).map(sort_and_cut).unbatch().map(trim)


def _bucketed_epochs(cfg: config_lib.DataConfig, share, seed, batch_size, first):
    """Endless bucketed batches from epoch `first.epoch` on, each with its `INPUT_POSITION`.

    Buckets fill across a whole epoch, so here positions count batches within their epoch and a
    restart replays at most part of one epoch.
    """

    def epoch_batches(epoch):
        serialized = share.epoch(epoch, seed, cfg.shuffle_buffer).map(
            lambda record: record[records.SERIALIZED]
        )
        examples = _examples(serialized, cfg.bucket_boundaries[-1])
        batches = bucket_and_pad(examples, cfg.bucket_boundaries, batch_size)

        def with_position(rank, batch):
            zero = tf.constant(0, tf.int64)
            return {**batch, INPUT_POSITION: tf.stack([epoch, zero, zero, rank])}

        return batches.enumerate().map(with_position)

    return tf.data.Dataset.range(first.epoch, tf.int64.max).flat_map(epoch_batches)


def _replica_slices(dataset, replicas: int):
    """This pipeline's batches -> `replicas` consecutive slices each, in replica order.

    The replicas of one pipeline split one sorted batch, so they share its padded shape and do
    equal work. Every slice carries the batch's `INPUT_POSITION`.
    """

    def split(batch):
        def per_replica(key, value):
            if key == INPUT_POSITION:
                return tf.tile(value[None], [replicas, 1])
            # A static batch stays static per replica (XLA and TPUs need it); else inferred.
            rows = -1 if value.shape[0] is None else value.shape[0] // replicas
            return tf.reshape(value, tf.concat([[replicas, rows], tf.shape(value)[1:]], 0))

        return tf.data.Dataset.from_tensor_slices(
            {key: per_replica(key, value) for key, value in batch.items()}
        )

    return dataset.flat_map(split)


def make_train_dataset(
    cfg: config_lib.DataConfig,
    seed: int,
    input_context: tf.distribute.InputContext | None = None,
    static_shapes: bool = False,
    resume_after: input_position.InputPosition | None = None,
    pad_to_buckets: bool = False,
) -> tf.data.Dataset:
    """Endless, shuffled training batches of similar lengths for one input pipeline.

    Args:
      cfg: the data config; `batch_size` is the global batch.
      seed: the run's seed; with the number of input pipelines it fixes every batch.
      input_context: this pipeline's place among the pipelines and replicas (None: one of each).
        The pipeline reads its share of the records, forms `batch_size / pipelines` rows per
        step and yields them as one slice per local replica.
      static_shapes: static batch shapes (TPU): padded to length buckets like `pad_to_buckets`.
      resume_after: continue right after the batch at this position (None: the start). Costs
        re-reading at most one epoch of this pipeline's raw records, never earlier epochs.
      pad_to_buckets: pad to bucket boundaries (XLA) instead of length-sorted pools.

    Returns:
      Batches (one per local replica per step), each with its `INPUT_POSITION`.
    """
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline = input_context.input_pipeline_id if input_context else 0
    replicas = input_context.num_replicas_in_sync // pipelines if input_context else 1
    batch_size = cfg.batch_size // pipelines
    first = resume_after or input_position.InputPosition.start(pipeline)
    share = records.PipelineShare(
        records.shard_files(paths.DatasetLayout(cfg.data_dir), "train"), pipelines, pipeline
    )
    if pad_to_buckets or static_shapes or not cfg.sort_pool:
        dataset = _bucketed_epochs(cfg, share, seed, batch_size, first)
    else:
        stream = share.stream(seed, cfg.shuffle_buffer, first.epoch, first.record)
        examples = _examples(stream, cfg.bucket_boundaries[-1])
        dataset = sort_pools_and_pad(examples, batch_size, cfg.sort_pool, seed, first.pool)
    dataset = dataset.skip(first.batch + 1).map(
        lambda batch: {
            **batch,
            INPUT_POSITION: tf.concat(
                [tf.constant([pipeline], tf.int64), batch[INPUT_POSITION]], 0
            ),
        }
    )
    if replicas > 1:
        dataset = _replica_slices(dataset, replicas)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(
    cfg: config_lib.DataConfig, split: str, limit: int = -1, with_text: bool = False
) -> tf.data.Dataset:
    """One ordered pass over `split` (or its first `limit` pairs that fit the model's longest
    bucket), each batch padded to its longest pair. With `with_text` each batch also carries
    the raw source and reference strings.
    """
    layout = paths.DatasetLayout(cfg.data_dir)
    serialized = records.read_in_order(records.shard_files(layout, split))
    examples = _examples(serialized, cfg.bucket_boundaries[-1], with_text).take(limit)
    return examples.batch(cfg.eval_batch_size).map(_pad).prefetch(tf.data.AUTOTUNE)
