"""The native baseline: torchvision's AlexNet in plain PyTorch, eager or `torch.compile`.

A training step is forward, `CrossEntropyLoss`, backward and an SGD-momentum
update, as in the Keras runs; inputs are generated on the device. Mixed
precision uses `torch.autocast` (plus a `GradScaler` for float16). Runs without
keras: only torch and torchvision are imported, and only inside the functions
(`alexnet_k3.core`, the out-of-memory classifier and the CPU name, imports no
framework). `make_step` is the step itself, which `settings_ab.py` times too.

The process keeps glibc's malloc as it is, even on a CPU, where the Keras
worker's `tune_for_speed()` applies `keep_freed_memory()` (issue #18).
"""

from __future__ import annotations

import gc
import platform

from alexnet_k3.core import cpu_name, is_out_of_memory
from benchmarks import common

AMP_DTYPES = {"float32": None, "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}


def channels_last_default(device_type: str) -> bool:
    """Whether the baseline uses the channels_last memory format by default: yes.

    GPU: the standard advice for convolutions on tensor cores (cuDNN's NHWC
    kernels, no layout transposes under autocast). CPU: measured 1.08x NCHW
    (1480 vs 1600 ms a step, faster in 4 of 6 interleaved rounds; torch 2.14.1,
    oneDNN, 2-core Xeon, batch 16, 224x224, float32 training).
    """
    return device_type in ("gpu", "cpu")


def run(impl: str, config: dict) -> list[dict]:
    """Measures `impl` ("torchvision-eager" or "torchvision-compile") for every mode and batch."""
    import torch
    import torchvision

    compiled = impl == "torchvision-compile"
    if config["device"] == "gpu":
        if not torch.cuda.is_available():
            return common.error_records(impl, config, "no GPU visible to torch")
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name(0)
        # As timm: autotune each convolution for the fixed input shape.
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        device_name = cpu_name()
    memory_format = config.get("torch_memory_format", "auto")
    channels_last = (
        channels_last_default(config["device"])
        if memory_format == "auto"
        else memory_format == "channels_last"
    )
    shared = dict(
        device=device_name,
        jit=compiled,
        data_format="channels_last" if channels_last else "channels_first",
        cudnn_benchmark=device.type == "cuda",
        keep_freed_memory=False,
        versions={
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None,
        },
    )
    records = []
    for mode in config["modes"]:
        for batch in config["batch_sizes"]:
            record = common.new_record(impl, mode, batch, config, **shared)
            try:
                record.update(_measure(mode, batch, config, device, compiled, channels_last))
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on (timm does this)
                record["error"] = "oom" if is_out_of_memory(exc) else common.short_error(exc)
                record["error_detail"] = common.short_error(exc, limit=2000)
            finally:
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            records.append(record)
            common.progress(record)
    return records


def _measure(mode, batch, config, device, compiled, channels_last) -> dict:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = make_step(
        mode,
        batch,
        config["image_size"],
        config["num_classes"],
        device,
        compiled=compiled,
        channels_last=channels_last,
        precision=config["precision"],
    )

    def synchronize(value):
        if device.type == "cuda":
            torch.cuda.synchronize()
        return value

    timing = common.time_steps(step, synchronize, warmup=config["warmup"], steps=config["steps"])
    result = common.summarize(timing, batch)
    if device.type == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return result


def make_step(
    mode: str,
    batch: int,
    size: int,
    num_classes: int = 1000,
    device=None,
    *,
    compiled: bool = False,
    channels_last: bool = True,
    precision: str = "float32",
):
    """One step of torchvision's AlexNet on a batch generated on `device` (default: the CPU).

    Args:
        mode: "train" (forward, `CrossEntropyLoss`, backward, SGD with momentum
            0.9 at learning rate 0.01; returns the loss) or "infer" (a forward
            pass under `torch.inference_mode()`; returns the logits).
        batch, size, num_classes: the batch's size, its square image side, the classes.
        device: a `torch.device`.
        compiled: `torch.compile` the model (the optimizer step stays eager, as timm does).
        channels_last: model and batch in torch's channels_last memory format.
        precision: a Keras dtype policy name; mixed ones run under `torch.autocast`
            (and a `GradScaler` for float16).

    Example:
        >>> step = make_step("train", 16, 224)
        >>> loss = step()
    """
    import torch
    import torchvision

    device = torch.device("cpu") if device is None else device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = torchvision.models.alexnet(num_classes=num_classes)
    model = model.to(device, memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    amp_dtype = AMP_DTYPES[precision]
    autocast = torch.autocast(
        device.type, dtype=getattr(torch, amp_dtype or "float32"), enabled=amp_dtype is not None
    )
    forward = torch.compile(model) if compiled else model
    if mode != "train":
        model.eval()

        def infer():
            with torch.inference_mode(), autocast:
                return forward(x)

        return infer

    model.train()
    y = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == "float16")

    def train():
        with autocast:
            loss = criterion(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    return train
