"""Issue 11: the package's training step against the plain PyTorch loop's, step by step.

Builds the `torchvision` variant at 64x64 behind the package's input pipeline
(`build_classifier`, seeded `init="torch"`), exports its initial weights with
`to_torchvision_state_dict` into `torchvision.models.alexnet`, then feeds both the
same digits batches in the same order, no augmentation, constant learning rate,
dropout off by default, and prints one JSON line per step: both losses, the torch
gradient norm, both update norms, the relative distance between the two models'
weights and both weight norms. The package side is `training.compile_model` +
`train_on_batch` (the step `fit` runs); the torch side is `torch.optim.SGD` with
coupled weight decay (`--torch-decoupled`: Keras's form instead).

Usage (torch backend, one thread):
    KERAS_BACKEND=torch OMP_NUM_THREADS=1 python -m benchmarks.sgd_step_compare \
        --steps 30 --every 5 --wd 5e-4
"""

# The backend is chosen (KERAS_BACKEND) before Keras is imported.
# ruff: noqa: E402

import argparse
import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")
import numpy as np
import torch

torch.set_num_threads(1)
import keras
import torchvision
from torch import nn

from alexnet_k3.config import TrainConfig
from alexnet_k3.datasets import load_digits
from alexnet_k3.model import build_classifier
from alexnet_k3.torch_loop import to_inputs as _to_inputs
from alexnet_k3.training import compile_model
from alexnet_k3.weights import to_torchvision_state_dict

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=30)
p.add_argument("--wd", type=float, default=0.0)
p.add_argument("--torch-decoupled", action="store_true")
p.add_argument("--dropout", action="store_true")
p.add_argument("--lr", type=float, default=0.01)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--every", type=int, default=1)
a = p.parse_args()

keras.config.set_image_data_format("channels_first")
keras.utils.set_random_seed(a.seed)
data = load_digits()
x, y = data.x_train, data.y_train
onehot = np.eye(10, dtype="float32")[y]
model = build_classifier(
    10,
    variant="torchvision",
    image_size=64,
    augment=False,
    flip=False,
    raw_shape=x.shape[1:],
    init="torch",
    seed=a.seed,
)
net = model.get_layer("alexnet")
if not a.dropout:
    for n in ("drop6", "drop7"):
        net.get_layer(n).rate = 0.0
cfg = TrainConfig(variant="torchvision", learning_rate=a.lr, weight_decay=a.wd, batch_size=a.batch)
compile_model(model, cfg, num_classes=10, steps_per_epoch=23, epochs=8, metrics=False)

tv = torchvision.models.alexnet(num_classes=10)
tv.load_state_dict({k: torch.from_numpy(v) for k, v in to_torchvision_state_dict(net).items()})
if not a.dropout:
    tv.classifier[0].p = 0.0
    tv.classifier[3].p = 0.0
opt = torch.optim.SGD(
    tv.parameters(), lr=a.lr, momentum=0.9, weight_decay=0.0 if a.torch_decoupled else a.wd
)
decayed = [q for q in tv.parameters() if q.ndim > 1]
loss_fn = nn.CrossEntropyLoss()


def kstate():
    return {k: v for k, v in to_torchvision_state_dict(net).items()}


def tstate():
    return {k: v.detach().numpy().copy() for k, v in tv.state_dict().items()}


def norm(d):
    return float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in d.values())))


rng = np.random.default_rng(a.seed)
order = np.concatenate([rng.permutation(len(x)) for _ in range(20)])
xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
yt = torch.from_numpy(y).long()
ks, ts = kstate(), tstate()
print("init max abs diff", max(float(np.abs(ks[k] - ts[k]).max()) for k in ks), flush=True)
# forward check
with torch.no_grad():
    lk = keras.ops.convert_to_numpy(model(x[:8], training=False))
    lt = tv.eval()(_to_inputs(xt[:8], 64)).numpy()
print("logits max abs diff", float(np.abs(lk - lt).max()), flush=True)
tv.train()
rows = []
for step in range(a.steps):
    idx = (
        order[step * a.batch : (step + 1) * a.batch] if (step + 1) * a.batch <= len(order) else None
    )
    kb = ks
    out = model.train_on_batch(x[idx], onehot[idx], return_dict=True)
    lossk = float(out["loss"])
    loss = loss_fn(tv(_to_inputs(xt[idx], 64)), yt[idx])
    opt.zero_grad()
    loss.backward()
    gnorm = float(torch.sqrt(sum((q.grad.double() ** 2).sum() for q in tv.parameters())))
    opt.step()
    if a.torch_decoupled and a.wd:
        with torch.no_grad():
            torch._foreach_mul_(decayed, 1 - a.lr * a.wd)
    if step % a.every == 0 or step == a.steps - 1:
        ks2, ts2 = kstate(), tstate()
        dk = {k: ks2[k] - ks[k] for k in ks}
        dt = {k: ts2[k] - ts[k] for k in ts}
        diff = {k: ks2[k] - ts2[k] for k in ks}
        row = dict(
            step=step,
            loss_k=round(lossk, 5),
            loss_t=round(float(loss), 5),
            tgrad=round(gnorm, 4),
            upd_k=round(norm(dk), 5),
            upd_t=round(norm(dt), 5),
            wdiff_rel=float("%.3g" % (norm(diff) / norm(ts2))),
            wnorm_t=round(norm(ts2), 3),
            wnorm_k=round(norm(ks2), 3),
        )
        ks, ts = ks2, ts2
    else:
        row = dict(step=step, loss_k=round(lossk, 5), loss_t=round(float(loss), 5))
        ks = None
    print(json.dumps(row), flush=True)
    if ks is None:
        ks, ts = kstate(), tstate()
