"""Issue 11: the plain loop (`alexnet_k3.reference`) started from the package's weights.

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
import time

os.environ.setdefault("KERAS_BACKEND", "torch")
import torch

torch.set_num_threads(1)
import keras

from alexnet_k3 import torch_loop
from alexnet_k3.datasets import load_digits

SIZE, BATCH, LR, EPOCHS = 64, 64, 0.01, 8

init_seed, loop_seed = int(sys.argv[1]), int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else "pkg"
data = load_digits()
torch.manual_seed(loop_seed)
model = torch_loop.build_model("torchvision", data.num_classes)
if mode == "pkg":
    from alexnet_k3.model import AlexNet
    from alexnet_k3.weights import to_torchvision_state_dict

    keras.config.set_image_data_format("channels_first")
    net = AlexNet(10, variant="torchvision", input_shape=(3, 64, 64), init="torch", seed=init_seed)
    state = to_torchvision_state_dict(net)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
optimizer = torch.optim.SGD(
    model.parameters(), lr=LR, momentum=torch_loop.MOMENTUM, weight_decay=5e-4
)
generator = torch.Generator().manual_seed(loop_seed)
images = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).contiguous()
labels = torch.from_numpy(data.y_train).long()
start, curve, losses = time.perf_counter(), [], []
for _ in range(EPOCHS):
    logs = torch_loop.run_epoch(
        model, optimizer, images, labels, generator, batch_size=BATCH, image_size=SIZE
    )
    logits = torch_loop.predict_logits(model, data.x_test, image_size=SIZE)
    curve.append(round(float((logits.argmax(1) == data.y_test).mean()), 5))
    losses.append(round(logs["loss"], 5))
print(
    json.dumps(
        {
            "init": mode,
            "init_seed": init_seed,
            "loop_seed": loop_seed,
            "acc": curve[-1],
            "curve": curve,
            "loss": losses,
            "wall": round(time.perf_counter() - start, 3),
        }
    )
)
