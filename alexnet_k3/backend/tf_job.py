"""TensorFlow's part of a multi-process job: `MultiWorkerMirroredStrategy` from TF_CONFIG.

Keras 3.15.1's `fit` fails under this strategy at its first step
(keras-team/keras#20585, "Attempt to convert a value (PerReplica:{...})"), in
two places of `keras/src/backend/tensorflow/trainer.py`; `route_around_20585`
replaces both on the model instance, through the methods Keras itself calls:

1. `_maybe_symbolic_build` hands the first batch, a `PerReplica`, to
   `strategy.reduce(..., axis=None)`, which a multi-worker strategy cannot make
   one tensor of. The batch is only read for its shapes and dtypes, so this
   takes the first local replica's part instead.
2. `reduce_per_replica(..., "auto")` reduces a step's outputs with
   `strategy.reduce("MEAN", v, axis=0)` in multi-worker mode, which fails on the
   rank-0 loss and metrics ("Invalid reduction dimension 0 for input with 0
   dimensions"); the train and test steps here return them with shape [1].

Proven on 2 CPU workers on localhost by identical weights on both
(`tests/test_distribution.py`). Everything else is TensorFlow's and Keras's own.
"""

from __future__ import annotations

import threading

import keras
import numpy as np


def strategy(timeout: float):
    """The job's strategy, made from TF_CONFIG; every collective waits at most `timeout` s.

    Must run before TensorFlow initializes its runtime (before any op or device
    query): collectives are configured at program start-up.
    """
    import tensorflow as tf

    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def prepare(model) -> None:
    """Readies a model compiled under the strategy for `fit` (call after each compile)."""
    route_around_20585(model)
    # Moving statistics over the global batch, as one process computes them, and the
    # same on every worker (each worker would otherwise keep its own shard's).
    for layer in batch_normalizations(model):
        layer.synchronized = True


def route_around_20585(model) -> None:
    """Sets the three methods the module doc describes on `model` (keras-team/keras#20585)."""
    import tensorflow as tf
    from keras import tree

    def first_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return value.values[0]
        return value

    def unbuilt() -> bool:  # what `_symbolic_build` needs a batch for
        metrics, loss = model._compile_metrics, model._compile_loss
        return (
            not all(layer.built for layer in model._flatten_layers())
            or (metrics is not None and not metrics.built)
            or (loss is not None and not loss.built)
        )

    def maybe_symbolic_build(iterator=None, data_batch=None):
        # Reads a batch only while something is unbuilt: with `steps_per_epoch` set,
        # Keras keeps one iterator, and each batch read here is one `fit` never sees.
        if iterator is not None and data_batch is None and unbuilt():
            for _, _, batches in iterator:  # TFEpochIterator hands out its iterator
                data_batch = tree.map_structure(first_replica, next(batches))
                break
        with model.distribute_strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def with_rank_1_outputs(step):
        def step_function(data):
            outputs = step(data)
            return tree.map_structure(
                lambda v: tf.reshape(v, [1]) if tf.convert_to_tensor(v).shape.rank == 0 else v,
                outputs,
            )

        return step_function

    def make_train_function(force=False):
        if model.train_function is None or force:
            model.train_function = model._make_function(with_rank_1_outputs(model.train_step))
        return model.train_function

    def make_test_function(force=False):
        if model.test_function is None or force:
            model.test_function = model._make_function(with_rank_1_outputs(model.test_step))
        return model.test_function

    model._maybe_symbolic_build = maybe_symbolic_build
    model.make_train_function = make_train_function
    model.make_test_function = make_test_function
    model.train_function = model.test_function = None  # made again with these steps


def batch_normalizations(model) -> list:
    """Every BatchNormalization layer inside `model`, nested models included."""
    found, todo = [], list(model.layers)
    while todo:
        layer = todo.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        todo.extend(getattr(layer, "layers", []))
    return found


def distributed_feed(strategy, shards, local_replicas: int):
    """`shards` (a `feed.shard_feed`: this worker's share of each global batch) for `fit`.

    A `distribute_datasets_from_function` dataset: each worker's pipeline is its
    own share, handed to its local replicas in equal parts, with no rebatching
    and no auto-sharding by TensorFlow (the shares are already disjoint). It
    reads `shards` again on every pass, so the epoch `shards.epoch` names.
    """
    import tensorflow as tf

    x0, y0 = shards[0]
    signature = tuple(tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)) for a in (x0, y0))

    def batches():
        for index in range(len(shards)):
            x, y = shards[index]
            yield from zip(*(np.split(a, local_replicas) for a in (x, y)), strict=True)

    def dataset_fn(context):
        dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
        # A known length: Keras then neither warns that the input "ran out of data"
        # nor guesses the epoch's end.
        length = tf.data.experimental.assert_cardinality(len(shards) * local_replicas)
        dataset = dataset.apply(length)
        return dataset.prefetch(1)

    return strategy.distribute_datasets_from_function(dataset_fn)


def save_outside_scope(save, model) -> None:
    """Runs `save()` outside the strategy's scope, with plain BatchNormalization configs.

    Inside the scope every variable Keras's savers create for themselves (a
    throwaway optimizer) is a collective the other workers never join: process 0's
    save fails, or the workers' collectives fall out of step ("Collective instance
    ... expected type", seen on 2 CPU workers). A strategy's scope belongs to the thread
    that entered it: a fresh thread has none. `synchronized=True` would go into a
    saved `.keras` config, which the torch and jax backends refuse to load.
    """
    layers = batch_normalizations(model)
    errors = []

    def run():
        try:
            save()
        except BaseException as error:  # raised again in the caller's thread
            errors.append(error)

    for layer in layers:
        layer.synchronized = False
    try:
        thread = threading.Thread(target=run, name="save-outside-strategy")
        thread.start()
        thread.join()
    finally:
        for layer in layers:
            layer.synchronized = True
    if errors:
        raise errors[0]
