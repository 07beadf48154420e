"""The native baseline: torchvision's AlexNet in plain PyTorch, eager or `torch.compile`.

A training step is forward, `CrossEntropyLoss`, backward and an SGD-momentum
update, as in the Keras runs; inputs are generated on the device. Mixed
precision uses `torch.autocast` (plus a `GradScaler` for float16). Runs without
keras: only torch and torchvision are imported, and only inside the functions
(`alexnet_k3.core`, the out-of-memory classifier and the CPU name, imports no
framework). `make_step` is the step itself, which `settings_ab.py` times too.

Every row of a run shares the process-wide settings: unless `--no-tune`, this
worker applies what the Keras worker's `tune_for_speed()` does, glibc keeping
freed memory on a CPU (`alexnet_k3.core.keep_freed_memory`) and cuDNN
autotuning on a GPU; `--matmul-precision` sets TF32 as the Keras worker does.
Timing: `pipelined` issues n steps back to back and synchronizes once;
`per-step` synchronizes after each (`benchmarks/common.py`).
"""

from __future__ import annotations

import gc
import platform

from alexnet_k3.core import cpu_name, freed_memory_kept, keep_freed_memory
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


def process_settings(config: dict, device) -> dict:
    """Applies the run's process-wide settings, as the Keras worker does; returns them.

    `tune`: cuDNN autotuning on a GPU (timm's choice too), glibc keeping freed
    memory on a CPU. `matmul_precision`: "highest" (full float32), "high" (TF32)
    or "default" (torch's own: TF32 for cuDNN convolutions, not for matmuls).
    """
    import torch

    applied = {"cudnn_benchmark": False, "keep_freed_memory": False}
    if config.get("tune", True):
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            applied["cudnn_benchmark"] = True
        else:
            applied["keep_freed_memory"] = keep_freed_memory()
    precision = config.get("matmul_precision", "default")
    if precision != "default":
        torch.backends.cuda.matmul.allow_tf32 = precision == "high"
        torch.backends.cudnn.allow_tf32 = precision == "high"
    tf32 = device.type == "cuda"
    applied["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32) if tf32 else None
    applied["tf32_conv"] = bool(torch.backends.cudnn.allow_tf32) if tf32 else None
    applied["freed_memory_kept"] = freed_memory_kept()
    return applied


def run(impl: str, config: dict) -> list[dict]:
    """Measures `impl` ("torchvision-eager" or "torchvision-compile") in every mode and timing."""
    import torch
    import torchvision

    compiled = impl == "torchvision-compile"
    if config["device"] == "gpu":
        if not torch.cuda.is_available():
            return common.error_records(impl, config, "no GPU visible to torch")
        device = torch.device("cuda")
        device_name = torch.cuda.get_device_name(0)
    else:
        device = torch.device("cpu")
        device_name = cpu_name()
    memory_format = config.get("torch_memory_format", "auto")
    channels_last = (
        channels_last_default(config["device"])
        if memory_format == "auto"
        else memory_format == "channels_last"
    )
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if device.type == "cuda":
        versions.update(cuda=torch.version.cuda, cudnn=str(torch.backends.cudnn.version()))
    shared = dict(
        device=device_name,
        jit=compiled,
        data_format="channels_last" if channels_last else "channels_first",
        head_dtype=head_dtype(config),
        versions=versions,
        **process_settings(config, device),
    )
    records = []
    timings = config.get("timings", common.TIMINGS)
    for mode in config["modes"]:
        for batch in config["batch_sizes"]:
            if compiled:
                # A fresh compile per batch size, as each Keras model is: without
                # it the second size recompiles with a dynamic batch dimension.
                torch._dynamo.reset()
            group = [common.new_record(impl, mode, t, batch, config, **shared) for t in timings]
            try:
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
                    float32_head=config.get("equal_precision", False),
                    arch=config.get("arch", "alexnet"),
                )
                for record in group:
                    record.update(_measure(step, record["timing"], batch, config, device))
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on (timm does this)
                for record in group:
                    if record.get("images_per_sec") is None:
                        common.record_error(record, exc)
            finally:
                step = None
                gc.collect()
                if device.type == "cuda":
                    # After an out-of-memory error the cache holds fragmented blocks.
                    torch.cuda.empty_cache()
            for record in group:
                records.append(record)
                common.progress(record)
    return records


def head_dtype(config: dict) -> str:
    """The dtype the last Linear computes in: the autocast dtype, or float32."""
    amp = AMP_DTYPES[config["precision"]]
    return "float32" if amp is None or config.get("equal_precision") else amp


def _measure(step, timing, batch, config, device) -> dict:
    import torch

    def synchronize(value):
        if device.type == "cuda":
            torch.cuda.synchronize()
        return value

    def run_steps(count):
        value = None
        for _ in range(count):
            value = step()
        return value

    counts = dict(warmup=config["warmup"], steps=config["steps"])
    counts["min_seconds"] = config.get("min_seconds", 0.0)
    if timing == "pipelined":
        measured = common.time_pipelined(run_steps, synchronize, **counts)
    else:
        measured = common.time_steps(step, synchronize, **counts)
    result = common.summarize(measured, batch)
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
    float32_head: bool = False,
    arch: str = "alexnet",
):
    """One step of torchvision's AlexNet (or `arch`) on a batch generated on `device`.

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
        float32_head: under mixed precision, the last Linear computes in float32
            (autocast off for it, its input cast up), as the Keras model's
            float32 logits layer does (`--equal-precision`).
        arch: the torchvision builder, `torchvision.models.<arch>`: "alexnet" or
            "vgg16" (`alexnet_k3.core.ARCHS`, whose names are torchvision's).

    Example:
        >>> step = make_step("train", 16, 224)
        >>> loss = step()
    """
    import torch
    import torchvision

    device = torch.device("cpu") if device is None else device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(torchvision.models, arch)(num_classes=num_classes)
    if float32_head and AMP_DTYPES[precision] is not None:
        model.classifier[-1] = float32_linear(model.classifier[-1], device.type)
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


def float32_linear(linear, device_type: str):
    """`linear` computing in float32 under autocast (a torch module)."""
    import torch

    class _Float32Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            with torch.autocast(device_type, enabled=False):
                return self.linear(x.float())

    return _Float32Head()
