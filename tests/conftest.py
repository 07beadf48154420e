"""Shared test setup. The backend comes from KERAS_BACKEND, one process per backend."""

import contextlib

# torchvision imports torch._dynamo, which loads triton's native library; loaded
# after tensorflow's, that library segfaults the process. Importing torchvision
# before anything imports keras (and with it tensorflow) avoids it.
with contextlib.suppress(ImportError):
    import torchvision  # noqa: F401

import keras
import pytest


@pytest.fixture(params=["channels_last", "channels_first"])
def data_format(request):
    """Runs the test under each image data format, restoring the previous one after."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(request.param)
    yield request.param
    keras.config.set_image_data_format(previous)
