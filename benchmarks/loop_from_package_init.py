"""Issue 11: the plain loop (`benchmarks.torch_reference`) started from the package's weights.

`python -m benchmarks.loop_from_package_init INIT_SEED LOOP_SEED [pkg|torch]`:
the torchvision variant, 64x64 digits, batch 64, lr 0.01, 8 epochs; "pkg" loads the
initial weights `AlexNet(init="torch", seed=INIT_SEED)` draws on every backend,
"torch" keeps the loop's own draw. LOOP_SEED seeds the loop's shuffles and dropout.
Prints one JSON line: test accuracy per epoch and training loss per epoch.
"""

# The backend is chosen (KERAS_BACKEND) before Keras is imported.
# ruff: noqa: E402

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")
import torch

torch.set_num_threads(1)
import keras

from alexnet_k3.datasets import load_digits
from benchmarks import torch_reference as tr

init_seed, loop_seed = int(sys.argv[1]), int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "pkg"
state = None
if mode == "pkg":
    from alexnet_k3.model import AlexNet
    from alexnet_k3.weights import to_torchvision_state_dict

    keras.config.set_image_data_format("channels_first")
    net = AlexNet(10, variant="torchvision", input_shape=(3, 64, 64), init="torch", seed=init_seed)
    state = {k: torch.from_numpy(v) for k, v in to_torchvision_state_dict(net).items()}
real = tr.build_model


def build(variant, n):
    m = real(variant, n)
    if state is not None:
        m.load_state_dict(state)
    return m


tr.build_model = build
rec = tr.train_reference(
    load_digits(),
    variant="torchvision",
    image_size=64,
    batch_size=64,
    lr=0.01,
    epochs=8,
    seed=loop_seed,
    device="cpu",
)
print(
    json.dumps(
        {
            "init": mode,
            "init_seed": init_seed,
            "loop_seed": loop_seed,
            "acc": rec["test_accuracy"],
            "curve": [e["test_accuracy"] for e in rec["history"]],
            "loss": [e["train_loss"] for e in rec["history"]],
            "wall": rec["wall_seconds"],
        }
    )
)
