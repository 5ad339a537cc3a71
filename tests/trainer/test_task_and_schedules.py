"""The loss, the train step (clipping), the learning-rate schedule and bucketing of batches."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import metadata as metadata_lib
from pipeline import vocab as vocab_lib
from trainer import data, schedules, task

SOURCE_VOCAB, TARGET_VOCAB = 20, 24


def _config(**train_changes) -> config_lib.ExperimentConfig:
    tiny = config_lib.get_experiment("attention_seq2seq/tiny")
    return dataclasses.replace(
        tiny,
        data=dataclasses.replace(tiny.data, batch_size=4),
        model=dataclasses.replace(tiny.model, embedding_dim=6, units=8),
        train=dataclasses.replace(tiny.train, **train_changes),
    )


def _metadata(source=SOURCE_VOCAB, target=TARGET_VOCAB):
    return {"vocab": {"source": {"size": source}, "target": {"size": target}}}


def _model(cfg, metadata=None, seed=0):
    """A model with all its variables, as the trainer builds it before the first step."""
    tf.keras.utils.set_random_seed(seed)
    seq2seq = task.build_model(cfg.model, metadata or _metadata())
    ids = tf.constant([[4, vocab_lib.EOS_ID]])
    lengths = tf.constant([2])
    seq2seq(
        {
            data.SOURCE_IDS: ids,
            data.SOURCE_LENGTHS: lengths,
            data.TARGET_IN: ids,
            data.TARGET_LENGTHS: lengths,
        }
    )
    seq2seq.projection(tf.zeros([1, cfg.model.units]))
    return seq2seq


def _batch():
    return {
        data.SOURCE_IDS: tf.constant(
            [[5, 6, 7, 3, 0, 0], [5, 6, 3, 0, 0, 0], [8, 9, 10, 11, 12, 3]]
        ),
        data.SOURCE_LENGTHS: tf.constant([4, 3, 6]),
        data.TARGET_IN: tf.constant([[2, 5, 6, 7, 0], [2, 5, 0, 0, 0], [2, 5, 6, 7, 8]]),
        data.TARGET_OUT: tf.constant([[5, 6, 7, 3, 0], [5, 3, 0, 0, 0], [5, 6, 7, 8, 3]]),
        data.TARGET_LENGTHS: tf.constant([4, 2, 5]),
    }


def _pad_columns(batch, extra):
    padded = dict(batch)
    for key in (data.SOURCE_IDS, data.TARGET_IN, data.TARGET_OUT):
        padded[key] = tf.pad(batch[key], [[0, 0], [0, extra]])
    return padded


def _garbage_after_lengths(batch):
    """Fills every position past the target length with real-looking ids."""
    changed = dict(batch)
    mask = tf.sequence_mask(batch[data.TARGET_LENGTHS], tf.shape(batch[data.TARGET_OUT])[1])
    for key in (data.TARGET_IN, data.TARGET_OUT):
        changed[key] = tf.where(mask, batch[key], tf.fill(tf.shape(batch[key]), 9))
    return changed


# cross_entropy


def test_cross_entropy_without_smoothing_is_the_nll():
    logits = tf.random.stateless_normal([2, 3, 7], [1, 2])
    labels = tf.constant([[0, 6, 3], [2, 2, 5]])
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    smoothed, nll = task.cross_entropy(logits, labels, 0.0)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-6)
    np.testing.assert_allclose(nll, expected, rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("spread", [1.0, 300.0])
def test_sparse_softmax_nll_matches_tfs_kernel(spread, jit_compile):
    """Values and gradients, [B, T, V] logits; a spread of 300 puts some labels ~1000 nats out."""
    logits = spread * tf.random.stateless_normal([3, 4, 50], [5, 6])
    labels = tf.random.stateless_uniform([3, 4], [7, 8], 0, 50, tf.int32)
    weights = tf.random.stateless_uniform([3, 4], [9, 1])  # a non-uniform incoming gradient

    @tf.function(jit_compile=jit_compile)
    def loss_and_grad(nll_fn):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            nll = nll_fn(labels, logits)
            total = tf.reduce_sum(weights * nll)
        return nll, tape.gradient(total, logits)

    nll, grad = loss_and_grad(task.sparse_softmax_nll)
    expected_nll, expected_grad = loss_and_grad(tf.nn.sparse_softmax_cross_entropy_with_logits)
    assert float(tf.reduce_max(expected_nll)) > (500 if spread > 1 else 0)
    np.testing.assert_allclose(nll, expected_nll, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


def test_smoothed_cross_entropy_matches_a_hand_computation():
    """Smoothing 0.1 over V=4 classes: target distribution 0.9 on the label plus 0.1/4 on each."""
    logits = np.array([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]], np.float32)
    labels = np.array([0, 3])
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = 0.9 * np.eye(4)[labels] + 0.1 / 4
    expected = -(target * log_probs).sum(axis=1)
    actual, nll = task.cross_entropy(tf.constant(logits), tf.constant(labels), 0.1)
    np.testing.assert_allclose(actual, expected, rtol=1e-6)
    np.testing.assert_allclose(nll, -log_probs[[0, 1], labels], rtol=1e-6)
    assert float(actual[1]) == pytest.approx(np.log(4.0))


@pytest.mark.parametrize("tied", [False, True])
def test_smoothing_terms_from_the_projection_match_the_logits(tied):
    """The linear shortcut gives the loss, and its gradients, of reading the logits."""
    cfg = _config()
    model_cfg = dataclasses.replace(cfg.model, tie_embeddings=tied)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    seq2seq = _model(cfg)
    outputs = tf.random.stateless_normal([6, cfg.model.units], [3, 4])
    labels = tf.constant([0, 5, 9, 1, 1, 7])
    projection = seq2seq.projection
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(outputs)
        logits = projection(outputs)
        shortcut, _ = task.cross_entropy(
            logits, labels, 0.1, projection.label_and_mean_logits(outputs, labels)
        )
        direct, _ = task.cross_entropy(logits, labels, 0.1)
    np.testing.assert_allclose(shortcut, direct, rtol=1e-5)
    sources = [outputs, *projection.trainable_variables]
    for a, b in zip(tape.gradient(shortcut, sources), tape.gradient(direct, sources), strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), atol=1e-6)


def test_cross_entropy_is_float32_for_bfloat16_logits():
    logits = tf.cast(tf.random.stateless_normal([3, 5], [0, 1]), tf.bfloat16)
    loss, nll = task.cross_entropy(logits, tf.constant([1, 2, 3]), 0.1)
    assert loss.dtype == nll.dtype == tf.float32 and loss.shape == (3,)


# TranslationTask.loss


LOSS_PATHS = {
    "boolean_mask": {},
    "dense_mask_for_xla": {"jit_compile": True},
    "parallel_sampling": {"sampling_probability": 0.5, "sampling_mode": "parallel"},
    "parallel_sampling_xla": {
        "sampling_probability": 0.5,
        "sampling_mode": "parallel",
        "jit_compile": True,
    },
    "sequential_sampling": {"sampling_probability": 0.5, "sampling_mode": "sequential"},
}


@pytest.mark.parametrize("path", LOSS_PATHS)
def test_loss_ignores_padding_and_positions_past_the_target_length(path):
    cfg = _config(**LOSS_PATHS[path])
    translation = task.TranslationTask(cfg, _model(cfg), optimizer=None)
    training = "sampling" in path
    batch = _batch()
    loss, tokens, nll = (x.numpy() for x in translation.loss(batch, 3, training))
    assert tokens == 11.0
    assert nll > 0.0 and loss != nll
    for variant in (_pad_columns(batch, 4), _garbage_after_lengths(batch)):
        np.testing.assert_allclose(
            [x.numpy() for x in translation.loss(variant, 3, training)],
            [loss, tokens, nll],
            rtol=1e-5,
        )
    changed = dict(batch)
    changed[data.TARGET_OUT] = tf.tensor_scatter_nd_update(batch[data.TARGET_OUT], [[1, 0]], [9])
    assert float(translation.loss(changed, 3, training)[0]) != pytest.approx(loss, rel=1e-6)


def test_dense_and_boolean_mask_losses_agree():
    cfg = _config()
    seq2seq = _model(cfg)
    plain = task.TranslationTask(cfg, seq2seq, None).loss(_batch(), 0, True)
    xla_cfg = _config(jit_compile=True)
    dense = task.TranslationTask(xla_cfg, seq2seq, None).loss(_batch(), 0, True)
    np.testing.assert_allclose([x.numpy() for x in dense], [x.numpy() for x in plain], rtol=1e-5)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_sampling_schedule_reaches_the_loss_only_while_training(mode):
    cfg = _config(sampling_probability=1.0, sampling_mode=mode)
    translation = task.TranslationTask(cfg, _model(cfg), None)
    batch = _batch()
    forced = task.TranslationTask(_config(), translation.model, None)
    eval_loss = translation.loss(batch, 0, training=False)[0]
    np.testing.assert_allclose(eval_loss, forced.loss(batch, 0, training=False)[0], rtol=1e-6)
    assert float(translation.loss(batch, 0, training=True)[0]) != pytest.approx(float(eval_loss))


# TranslationTask.train_step: clipping


@pytest.fixture(scope="module")
def real_batch(small_dataset):
    cfg = _config()
    data_cfg = dataclasses.replace(cfg.data, data_dir=small_dataset.root)
    batch = next(iter(data.make_train_dataset(data_cfg, seed=1)))
    return batch, metadata_lib.read_metadata(small_dataset)


def _train_once(cfg, metadata, batch, strategy):
    """One train step with SGD(lr=1), so the update equals the clipped gradient.

    SGD sits in a LossScaleOptimizer of scale 1, as Adam does in `schedules.build_optimizer`.

    Returns (metrics, weight change, the gradient of the loss computed here independently).
    """
    with strategy.scope():
        seq2seq = _model(cfg, metadata)
        sgd = tf.keras.optimizers.SGD(learning_rate=1.0)
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(sgd, initial_scale=1.0)
        optimizer.build(seq2seq.trainable_variables)
    translation = task.TranslationTask(cfg, seq2seq, optimizer)
    variables = seq2seq.trainable_variables
    step = tf.constant(0, tf.int64)
    with tf.GradientTape() as tape:
        loss = translation.loss(batch, step, training=True)[0] / cfg.data.batch_size
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    before = [v.numpy() for v in variables]
    metrics = strategy.run(translation.train_step, args=(batch, step))
    change = [b - v.numpy() for b, v in zip(before, variables, strict=True)]
    return metrics, change, grads


def _global_norm(tensors):
    return float(tf.linalg.global_norm([tf.convert_to_tensor(t) for t in tensors]))


@pytest.mark.parametrize("clip_fraction", [0.25, 0.0, 4.0])
def test_clipping_caps_the_global_norm_of_the_update(real_batch, clip_fraction):
    """clip_fraction scales the clip norm relative to the true gradient norm (0: no clipping)."""
    batch, metadata = real_batch
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    _, _, grads = _train_once(_config(), metadata, batch, strategy)
    norm = _global_norm(grads)
    assert norm > 0.0
    cfg = _config(clip_norm=clip_fraction * norm)
    metrics, change, grads = _train_once(cfg, metadata, batch, strategy)

    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-4)
    assert float(metrics["tokens"]) == float(tf.reduce_sum(batch[data.TARGET_LENGTHS]))
    clipped = clip_fraction < 1.0 and clip_fraction > 0.0
    expected_norm = clip_fraction * norm if clipped else norm
    assert _global_norm(change) == pytest.approx(expected_norm, rel=1e-3)
    scale = clip_fraction if clipped else 1.0
    for delta, grad in zip(change, grads, strict=True):
        np.testing.assert_allclose(delta, scale * grad.numpy(), rtol=1e-3, atol=1e-6)


def test_train_step_runs_under_the_default_strategy(real_batch):
    batch, metadata = real_batch
    metrics, change, _ = _train_once(_config(), metadata, batch, tf.distribute.get_strategy())
    assert float(metrics["loss_sum"]) > 0.0
    assert _global_norm(change) > 0.0


# Learning-rate schedule


@pytest.mark.parametrize(
    "decay, step, expected",
    [
        ("rsqrt", 0, 0.1),  # step + 1 = 1 of 10 warmup steps
        ("rsqrt", 4, 0.5),
        ("rsqrt", 9, 1.0),  # warmup ends: the peak
        ("rsqrt", 39, 0.5),  # 4x warmup: rsqrt(4) halves the peak
        ("rsqrt", 159, 0.25),
        ("constant", 0, 0.1),
        ("constant", 9, 1.0),
        ("constant", 10**6, 1.0),
    ],
)
def test_warmup_decay_at_fixed_steps(decay, step, expected):
    schedule = schedules.WarmupDecay(2e-3, 10, decay)
    assert float(schedule(tf.constant(step, tf.int64))) == pytest.approx(2e-3 * expected, rel=1e-6)


def test_warmup_of_zero_steps_starts_at_the_peak_and_config_round_trips():
    schedule = schedules.WarmupDecay(0.5, 0, "rsqrt")
    assert float(schedule(0)) == pytest.approx(0.5)
    assert float(schedule(3)) == pytest.approx(0.25)
    rebuilt = schedules.WarmupDecay(**schedule.get_config())
    assert float(rebuilt(3)) == float(schedule(3))


def test_optimizer_follows_the_schedule_of_its_config():
    train = _config(learning_rate=0.01, warmup_steps=4, decay="rsqrt").train
    optimizer = schedules.build_optimizer(train, "float32")
    assert isinstance(optimizer.inner_optimizer, tf.keras.optimizers.Adam)
    assert float(optimizer.loss_scale) == 1.0
    weight = tf.Variable(1.0)
    for iterations, expected in [(0, 0.0025), (3, 0.01), (15, 0.005)]:
        optimizer.iterations.assign(iterations)
        optimizer.apply_gradients([(tf.zeros([]), weight)])
        # `learning_rate` reports the rate the last update used.
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-6)
        assert int(optimizer.iterations) == iterations + 1
    scaled = schedules.build_optimizer(train, "mixed_float16")
    assert float(scaled.loss_scale) == 2.0**15


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_adam_takes_the_steps_keras_adam_takes(policy):
    """Same weights and slots after several steps, dense and sparse (embedding) gradients."""
    results = []
    for adam in (tf.keras.optimizers.Adam, schedules.FusedAdam):
        tf.keras.mixed_precision.set_global_policy(policy)
        try:
            tf.keras.utils.set_random_seed(0)
            embedding, dense = tf.keras.layers.Embedding(7, 3), tf.keras.layers.Dense(5)
            dense.build([None, 3])
            embedding.build([None])
            variables = embedding.trainable_variables + dense.trainable_variables
            optimizer = adam(schedules.WarmupDecay(0.01, 2, "rsqrt"))
            for step in range(5):
                with tf.GradientTape() as tape:
                    ids = tf.constant([step % 7, 3])
                    loss = tf.reduce_sum(tf.cast(dense(embedding(ids)), tf.float32) ** 2)
                optimizer.apply_gradients(
                    zip(tape.gradient(loss, variables), variables, strict=True)
                )
            results.append([v.numpy() for v in variables + optimizer.variables])
        finally:
            tf.keras.mixed_precision.set_global_policy("float32")
    for keras_value, fused_value in zip(*results, strict=True):
        np.testing.assert_allclose(fused_value, keras_value, rtol=1e-4, atol=1e-6)


# bucket_and_pad

BOUNDARIES = (4, 8, 12)


def _examples(pairs):
    """Model-input examples with the given (source, target) lengths; ids are 4, 5, 6, ...

    As the input pipeline makes them: id fields are rank-1 ragged elements.
    """
    source, target = (tf.constant(side) for side in zip(*pairs, strict=True))
    return tf.data.Dataset.from_tensor_slices(
        {
            data.SOURCE_IDS: tf.ragged.range(4, source + 4),
            data.SOURCE_LENGTHS: source,
            data.TARGET_IN: tf.ragged.range(4, target + 4),
            data.TARGET_OUT: tf.ragged.range(5, target + 5),
            data.TARGET_LENGTHS: target,
        }
    )


PAIRS = [(1, 2), (3, 4), (5, 2), (2, 7), (8, 8), (9, 3), (12, 11), (4, 12), (13, 2), (3, 20)]


def _longest(batch):
    return np.maximum(batch[data.SOURCE_LENGTHS], batch[data.TARGET_LENGTHS])


def test_every_batch_is_padded_to_its_bucket_boundary():
    dataset = data.bucket_and_pad(_examples(PAIRS), BOUNDARIES, 2, drop_remainder=False)
    seen = []
    for batch in dataset.as_numpy_iterator():
        width = batch[data.SOURCE_IDS].shape[1]
        assert width in BOUNDARIES
        lower = ([0] + list(BOUNDARIES))[BOUNDARIES.index(width)]
        assert np.all((_longest(batch) > lower) & (_longest(batch) <= width))
        for key in (data.TARGET_IN, data.TARGET_OUT):
            assert batch[key].shape[1] == width
        positions = np.arange(width)[None, :]
        padding = positions >= batch[data.SOURCE_LENGTHS][:, None]
        assert np.all(batch[data.SOURCE_IDS][padding] == vocab_lib.PAD_ID)
        assert np.all(batch[data.SOURCE_IDS][~padding] >= 4)
        seen += zip(batch[data.SOURCE_LENGTHS], batch[data.TARGET_LENGTHS], strict=True)
    expected = [p for p in PAIRS if max(p) <= BOUNDARIES[-1]]
    assert sorted(seen) == sorted(expected)
    assert len(expected) == len(PAIRS) - 2


def test_sorted_pools_pad_each_side_to_its_own_longest_and_lose_nothing():
    pairs = [(s, t) for s in range(1, 9) for t in range(1, 9)]  # 64 pairs, 16 batches of 4
    dataset = data.sort_pools_and_pad(_examples(pairs), 4, pool_batches=8, seed=3)
    seen = []
    for batch in dataset.as_numpy_iterator():
        assert batch[data.SOURCE_IDS].shape[1] == batch[data.SOURCE_LENGTHS].max()
        for key in (data.TARGET_IN, data.TARGET_OUT):
            assert batch[key].shape[1] == batch[data.TARGET_LENGTHS].max()
        # Sorted by the longer side first: a batch spans at most two neighbouring lengths.
        assert np.ptp(_longest(batch)) <= 1
        seen += zip(batch[data.SOURCE_LENGTHS], batch[data.TARGET_LENGTHS], strict=True)
    assert sorted(seen) == sorted(pairs)


def test_drop_remainder_gives_only_full_batches():
    dataset = data.bucket_and_pad(_examples(PAIRS), BOUNDARIES, 2)
    sizes = [len(b[data.SOURCE_LENGTHS]) for b in dataset.as_numpy_iterator()]
    assert sizes and set(sizes) == {2}


def test_training_batches_have_a_static_batch_and_their_own_bucket_length():
    """The XLA/TPU input: [batch, bucket] per batch, not every batch at the last boundary."""
    dataset = data.bucket_and_pad(_examples(PAIRS), BOUNDARIES, 2)
    assert dataset.element_spec[data.SOURCE_IDS].shape.as_list() == [2, None]
    widths = [b[data.TARGET_OUT].shape[1] for b in dataset.as_numpy_iterator()]
    assert sorted(set(widths)) == [4, 8, 12]


def test_train_dataset_with_static_shapes_is_tpu_ready(real_batch, small_dataset):
    cfg = dataclasses.replace(_config().data, data_dir=small_dataset.root)
    context = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2
    )
    dataset = data.make_train_dataset(cfg, seed=1, input_context=context, static_shapes=True)
    specs = {k: v for k, v in dataset.element_spec.items() if k != data.INPUT_POSITION}
    assert all(spec.shape[0] == cfg.batch_size // 2 for spec in specs.values())
    batch = next(iter(dataset))
    assert batch[data.TARGET_IN].shape[1] in cfg.bucket_boundaries
    assert np.all(batch[data.TARGET_IN][:, 0].numpy() == vocab_lib.BOS_ID)
    last = batch[data.TARGET_LENGTHS].numpy() - 1
    target_out = batch[data.TARGET_OUT].numpy()
    assert np.all(target_out[np.arange(len(last)), last] == vocab_lib.EOS_ID)
