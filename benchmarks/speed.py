"""Speed figures of the project on the real data, printed as a table.

    python benchmarks/speed.py --data-dir /tmp/cifar10 [--preset baseline] [--steps 150] [--profile]
        [--device cpu|cuda|mps] [--memory-format auto|channels_last|contiguous]

Measures, in one process: reading all batches and splitting; training throughput of
the project's step (whole dataset as uint8 tensors, batched augmentation, the device's
training layout, bf16 where native) against a naive PyTorch loop (a DataLoader over
per-image torchvision transforms, NCHW float32) on the same model and optimizer,
alternating so that load on a shared machine hits both alike; evaluating the 10,000 test
images; one uploaded PNG from bytes to top-k on the CPU (p50/p95 of 200 warm calls); peak
memory. The step's sustained arithmetic (images/s x the model's training FLOPs per image)
is printed next to what a large fp32 and bf16 matrix product reach on the same device in
the same process, its practical peak. A preset that fixes its stem's bias is timed as its
later epochs run, with the bias fixed (``fixes_stem``). ``--profile`` adds torch.profiler's
table of the step; ``--memory-format`` times the step in another layout than the
project's own (``training_memory_format``); ``--compile`` times it with the model compiled
by ``torch.compile`` (its build falls in the untimed warm-up steps).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cifar_core.augment import augment
from cifar_core.config import Preset, get_preset
from cifar_core.data import load_cifar10
from cifar_core.devices import (
    autocast,
    resolve_device,
    training_memory_format,
    tune_for_fixed_shapes,
    use_bf16,
)
from cifar_core.evaluation import evaluate
from cifar_core.inference import predict_files
from cifar_core.model import build_model, to_input, training_flops
from cifar_core.training import learn_stem_bias, make_optimizer, stem_bias_learns

MEMORY_FORMATS = {"auto": None, "channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_gflops(dtype: torch.dtype, device: torch.device, reps: int = 8) -> float:
    """Sustained GFLOP/s of a large square matrix product: the device's practical peak."""
    n = 2048 if device.type == "cpu" else 8192  # a GPU needs the larger one to fill up
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def fixes_stem(preset: Preset) -> bool:
    """Whether the preset fixes its stem's bias after its first epochs: then the step is
    timed, and its arithmetic counted, as it runs in the epochs after that, most of them."""
    return not stem_bias_learns(preset.train, preset.train.epochs)


def project_steps(preset_name: str, x_train: np.ndarray, y_train: np.ndarray, steps: int,
                  device: torch.device, memory_format: torch.memory_format,
                  profile: bool = False, compiled: bool = False, warmup: int = 5) -> float:
    """Images per second of the project's training step, timed after ``warmup`` untimed steps."""
    preset = get_preset(preset_name)
    cfg = preset.train
    bf16 = use_bf16(cfg.precision, device)
    tune_for_fixed_shapes(device)
    model = build_model(preset.model).to(device=device, memory_format=memory_format).train()
    learn_stem_bias(model, not fixes_stem(preset))
    optimizer = make_optimizer(model, cfg, device)
    forward = torch.compile(model) if compiled else model
    x_all, y_all = torch.from_numpy(x_train).to(device), torch.from_numpy(y_train).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    bs = cfg.batch_size

    def step() -> None:
        idx = torch.randint(0, len(y_all), (bs,), generator=gen, device=device)
        x = augment(to_input(x_all[idx]), cfg.augmentation, gen).contiguous(memory_format=memory_format)
        with autocast(device, bf16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y_all[idx], label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) if profile else contextlib.nullcontext() as prof:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        seconds = time.perf_counter() - start
    if profile:
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=15))
    return steps * bs / seconds


def naive_steps(preset_name: str, x_train: np.ndarray, y_train: np.ndarray, steps: int,
                device: torch.device, warmup: int = 5) -> float:
    """Images per second of the textbook loop: DataLoader, per-image transforms, NCHW fp32;
    timed after ``warmup`` untimed steps."""
    # Here, not at the top: torchvision loads torch's compiler stack (seconds of CPU), which
    # the other measurements, and the scripts that import them, do not need.
    from torchvision.transforms import v2

    preset = get_preset(preset_name)
    model = build_model(preset.model).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3) if preset.train.optimizer == "adam" \
        else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if preset.train.augmentation == "keras":
        per_image = v2.Compose([v2.RandomAffine(20, translate=(0.2, 0.2)), v2.RandomHorizontalFlip()])
    else:
        per_image = v2.Compose([v2.RandomCrop(32, padding=4, padding_mode="reflect"),
                                v2.RandomHorizontalFlip()])

    class Augmented(TensorDataset):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = super().__getitem__(i)
            return per_image(x.permute(2, 0, 1).float() / 255), y

    loader = DataLoader(Augmented(torch.from_numpy(x_train), torch.from_numpy(y_train)),
                        batch_size=preset.train.batch_size, shuffle=True, num_workers=0)
    it = iter(loader)
    for step in range(steps + warmup):
        if step == warmup:
            synchronize(device)
            start = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    synchronize(device)
    return steps * preset.train.batch_size / (time.perf_counter() - start)


def predict_latency(model: torch.nn.Module, classes: tuple[str, ...], image: np.ndarray) -> list[float]:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((256, 256)).save(buffer, format="PNG")
    raw = buffer.getvalue()
    times = []
    for i in range(220):
        start = time.perf_counter()
        predict_files(model, [("photo.png", raw)], classes)
        if i >= 20:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--steps", type=int, default=150, help="training steps per timing")
    parser.add_argument("--rounds", type=int, default=2, help="alternations project/naive")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of the step")
    parser.add_argument("--compile", action="store_true", help="time the step with the model torch.compile'd")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--memory-format", default="auto", choices=list(MEMORY_FORMATS),
                        help="the step's layout (auto: the project's training layout for the device)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    memory_format = MEMORY_FORMATS[args.memory_format] or training_memory_format(device)
    torch.manual_seed(0)

    start = time.perf_counter()
    data = load_cifar10(args.data_dir, download=False)
    load_s = time.perf_counter() - start

    peaks = {torch.float32: [], torch.bfloat16: []}
    project, naive = [], []
    for round_ in range(args.rounds):
        for dtype, figures in peaks.items():
            figures.append(matmul_gflops(dtype, device))
        project.append(project_steps(args.preset, data.x_train, data.y_train, args.steps, device,
                                     memory_format, args.profile and round_ == 0, args.compile))
        naive.append(naive_steps(args.preset, data.x_train, data.y_train, max(20, args.steps // 3), device))

    preset = get_preset(args.preset)
    model = build_model(preset.model).eval()
    start = time.perf_counter()
    evaluate(model, data.x_test, data.y_test, data.classes, device.type, preset.train.precision,
             preset.train.tta)
    eval_s = time.perf_counter() - start
    latency = sorted(predict_latency(model.cpu(), data.classes, data.x_test[0]))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    step_gflops = statistics.median(project) * training_flops(preset.model, fixes_stem(preset)) / 1e9
    fp32_peak, bf16_peak = (statistics.median(figures) for figures in peaks.values())
    rows = [
        ("read all batches + split", f"{load_s:.2f} s"),
        ("device, step layout", f"{device.type}, {str(memory_format).removeprefix('torch.')}"
                                f"{', torch.compile' if args.compile else ''}"),
        (f"train step, project ({args.preset}{', stem bias fixed' if fixes_stem(preset) else ''})",
         f"{statistics.median(project):,.0f} images/s"),
        ("  its sustained arithmetic", f"{step_gflops:,.0f} GFLOP/s"),
        ("  matrix product peak fp32 / bf16", f"{fp32_peak:,.0f} / {bf16_peak:,.0f} GFLOP/s"),
        ("  share of the better peak", f"{step_gflops / max(fp32_peak, bf16_peak):.0%}"),
        ("train step, naive DataLoader loop", f"{statistics.median(naive):,.0f} images/s"),
        ("speed-up", f"{statistics.median(project) / statistics.median(naive):.1f}x"),
        ("seconds per 40,000-image epoch (project)", f"{40000 / statistics.median(project):.1f} s"),
        ("evaluate 10,000 test images", f"{eval_s:.2f} s"),
        ("predict one PNG on the CPU, p50 / p95", f"{latency[len(latency) // 2] * 1e3:.1f} / "
                                       f"{latency[int(len(latency) * 0.95)] * 1e3:.1f} ms"),
        ("peak memory (RSS)", f"{peak_mb:,.0f} MB"),
        *([("peak GPU memory", f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MB")]
          if device.type == "cuda" else []),
        ("torch threads", str(torch.get_num_threads())),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
