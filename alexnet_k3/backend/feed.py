"""How in-memory arrays reach `fit`, `evaluate` and `predict` on each backend."""

from __future__ import annotations

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
    30-step epoch of 10.0 s took 20.5 s, a 2.9 s predict took 5.1 s.

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

    arrays = (tf.constant(x),) if y is None else (tf.constant(x), tf.constant(y))
    indices = tf.data.Dataset.range(len(x))
    if shuffle:
        indices = indices.shuffle(len(x), reshuffle_each_iteration=True)

    def gather(i):
        batch = tuple(tf.gather(a, i) for a in arrays)
        return batch if y is not None else batch[0]

    batches = indices.batch(batch_size).map(gather)
    options = tf.data.Options()
    options.autotune.enabled = False
    feed = {"x": batches.prefetch(1).with_options(options)}
    if shuffle:
        # The dataset reshuffles itself; this silences Keras's warning that it would
        # ignore `fit`'s default shuffle=True for a dataset.
        feed["shuffle"] = False
    return feed
