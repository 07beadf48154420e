"""How in-memory arrays reach `fit`, `evaluate` and `predict` on each backend."""

from __future__ import annotations

import random

import numpy as np

from alexnet_k3.backend import info


def array_feed(x, y=None, *, batch_size: int, shuffle: bool = False) -> dict:
    """Keyword arguments that feed in-memory arrays to `fit`, `evaluate` or `predict`.

    jax and torch: the arrays themselves, Keras's own path (`x`, `y`,
    `batch_size`, `shuffle` when asked for).

    tensorflow: `{"x": dataset}` (and `shuffle=False`: the dataset shuffles
    itself), a `tf.data.Dataset` of `(x, y)` batches (of
    `x` alone when `y` is None), reshuffled every epoch when `shuffle`, the last
    batch partial, with tf.data's autotuning off. Keras's own dataset for
    arrays autotunes, and deleting an autotuned iterator waits for tf.data's
    optimization thread, which wakes every 5-10 s: every epoch, validation
    pass and `predict` call ended on that tick. Measured on the 2-core CPU: a
    30-step epoch of 10.0 s took 20.5 s, a 2.9 s predict took 5.1 s. An
    `np.memmap` (an image folder's cache, which may not fit in memory) stays on
    disk: each batch is read from it as the dataset reaches it.

    Example:
        >>> model.fit(**array_feed(x, y, batch_size=128, shuffle=True), epochs=2)
    """
    if info.name() != "tensorflow":
        feed = {"x": x, "batch_size": batch_size}
        if y is not None:
            feed["y"] = y
        if shuffle:
            feed["shuffle"] = True
        return feed
    import tensorflow as tf

    labels = None if y is None else tf.constant(y)
    indices = tf.data.Dataset.range(len(x))
    if shuffle:
        indices = indices.shuffle(len(x), reshuffle_each_iteration=True)
    if isinstance(x, np.memmap):

        def images(i):
            batch = tf.numpy_function(lambda rows: x[rows], [i], tf.as_dtype(x.dtype))
            batch.set_shape((None, *x.shape[1:]))
            return batch

    else:
        in_memory = tf.constant(x)

        def images(i):
            return tf.gather(in_memory, i)

    def gather(i):
        return images(i) if y is None else (images(i), tf.gather(labels, i))

    batches = indices.batch(batch_size).map(gather)
    options = tf.data.Options()
    options.autotune.enabled = False
    feed = {"x": batches.prefetch(1).with_options(options)}
    if shuffle:
        # The dataset reshuffles itself; this silences Keras's warning that it would
        # ignore `fit`'s default shuffle=True for a dataset.
        feed["shuffle"] = False
    return feed


def shard_feed(
    x, y, *, batch_size: int, rank: int, processes: int, replicas=None, shuffle_seed=None
):
    """This process's share of every global batch of `x, y`: a `keras.utils.PyDataset`.

    For a multi-process job, where each process feeds `fit` its local share and the
    engine assembles the global batch (`batch_size` images). With `shuffle_seed`,
    every epoch is a permutation seeded by the seed and the epoch (`epoch`, set
    before each epoch), so every process draws the same one; it is padded with
    its own first items to a multiple of `replicas` (the job's devices, by default
    `processes`), as torch's `DistributedSampler` pads, and every process takes
    its slice of each global batch: the shares are disjoint and together cover
    the epoch. Without it, the arrays in order, unpadded (`len(x)` must then be a
    multiple of `replicas`).

    Example:
        >>> feed = shard_feed(x, y, batch_size=64, rank=1, processes=2, shuffle_seed=0)
        >>> len(feed), feed[0][0].shape[0]  # global batches, 32 images of each here
    """
    import keras

    pad = -len(x) % (replicas or processes)

    class ShardFeed(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self._order = (None, None)  # (epoch, padded permutation)

        def __len__(self):
            return -(-(len(x) + pad) // batch_size)

        def order(self):
            if shuffle_seed is None:
                return np.arange(len(x))
            if self._order[0] != self.epoch:
                order = np.random.default_rng([shuffle_seed, self.epoch]).permutation(len(x))
                self._order = (self.epoch, np.concatenate([order, order[:pad]]))
            return self._order[1]

        def __getitem__(self, index):
            batch = self.order()[index * batch_size : (index + 1) * batch_size]
            share = len(batch) // processes
            rows = np.sort(batch[rank * share : (rank + 1) * share])  # sorted: memmap reads
            return x[rows], y[rows]

    return ShardFeed()


def repeated_batch_feed(x, y) -> dict:
    """Keyword arguments for `fit(..., steps_per_epoch=n)` on one batch, repeated.

    The benchmark's pipelined training: `fit` runs n steps on the same
    device-resident batch, the way it runs a real epoch (no step waits for the
    previous one). jax and torch: a generator yielding the batch itself, which
    Keras's generator adapter passes through without a copy. tensorflow: a
    `tf.data` dataset of the batch, repeated, autotuning off (see `array_feed`);
    tf.data holds it on the host, so on a GPU each step copies it to the device,
    as every tf.data feed does.

    Example:
        >>> model.fit(**repeated_batch_feed(x, y), steps_per_epoch=50, verbose=0)
    """
    if info.name() == "tensorflow":
        import tensorflow as tf

        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = tf.data.Dataset.from_tensors((x, y)).repeat().with_options(options)
        return {"x": dataset, "shuffle": False}

    def batches():
        while True:
            yield x, y

    # shuffle=False: there is nothing to shuffle, and Keras warns that it would ignore it.
    return {"x": batches(), "shuffle": False}


def device_predict(model, x):
    """`run(n)`: n inference steps on `x`, outputs kept on the device; returns the last.

    What `model.predict_on_batch(x)` does, without its copy of the outputs to
    the host after every call (`predict` copies them all at its end instead):
    the model's own compiled `predict_function`, called n times back to back.
    On jax the model's variables are gathered once per call into the functional
    state `predict_function` takes, and written back after it, as `predict` does.

    Example:
        >>> logits = synchronize(device_predict(model, x)(20))
    """
    model.predict_on_batch(x)  # builds the model and its predict_function
    if info.name() != "jax":

        def run(steps: int):
            outputs = None
            for _ in range(steps):
                outputs = model.predict_function([(x,)])
            return outputs

        return run

    def run(steps: int):
        state = model._get_jax_state(
            trainable_variables=True,
            non_trainable_variables=True,
            metrics_variables=False,
            purge_model_variables=False,
        )
        model._jax_state_synced = False
        outputs = None
        for _ in range(steps):
            outputs, state = model.predict_function(state, iter([(x,)]))
        # The compiled function donates the state it is given: the model's own
        # variables now point at freed buffers until the returned state is written
        # back, as `predict_on_batch` does.
        trainable, non_trainable = state
        model._jax_state = {
            "trainable_variables": trainable,
            "non_trainable_variables": non_trainable,
        }
        model.jax_state_sync()
        return outputs

    return run


# The random state a resumed run must restore to continue as an uninterrupted one:
# the global generators `fit` draws its shuffles from (numpy's on jax, torch's on
# torch; Python's for completeness), and every layer's SeedGenerator state
# (dropout masks, augmentation), which Keras's weight files leave out.
# tensorflow: the feed's tf.data shuffle keeps its position inside the dataset
# object, so a resumed tensorflow run reshuffles from the first epoch's order.


def random_state(model) -> dict:
    """This process's and `model`'s random state, as JSON-ready lists (see `set_random_state`)."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
        "seed_generators": [[v.path, np.asarray(v).tolist()] for v in _seed_states(model)],
    }
    if info.name() == "torch":
        import torch

        state["torch"] = torch.get_rng_state().tolist()
    return state


def set_random_state(model, state: dict) -> None:
    """Restores what `random_state` returned, on the same backend; unknown parts are skipped."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    variables = _seed_states(model)
    # In model order: the same model built again lists them in the same order (their
    # names are numbered per process, so a second build in one process differs there).
    if len(variables) == len(state["seed_generators"]):
        for variable, (_, value) in zip(variables, state["seed_generators"]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
    if "torch" in state and info.name() == "torch":
        import torch

        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


def _seed_states(model) -> list:
    return [v for v in model.variables if "seed_generator_state" in v.path]
