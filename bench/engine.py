"""Engine benchmark: overhead, throughput, quality vs compute, gradient variance (issue 3).

    .venv/bin/python bench/engine.py [--quick] > engine.json

Everything is measured side by side in one run and printed as one JSON document; ratios, not
absolute times, are what compare across this shared, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quality import load_benchmark, score
from pipeline.attribution import log_odds
from pipeline.baselines import GradCam
from pipeline.fido import Fido, FidoConfig, FidoObjective
from pipeline.models import load_model


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def photos(n: int, size: tuple[int, int]) -> torch.Tensor:
    """``n`` of scikit-image's bundled photos (cycled), resized like the pipeline does."""
    import skimage.data
    from PIL import Image

    from flows.demo import DEMO_PHOTOS
    from pipeline.images import to_tensor

    out = []
    for i in range(n):
        pixels = getattr(skimage.data, DEMO_PHOTOS[i % len(DEMO_PHOTOS)])()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        out.append(to_tensor(Image.fromarray(pixels), size))
    return torch.stack(out)


def overhead(model: torch.nn.Module, images: torch.Tensor, samples: int, repeats: int) -> dict:
    """One optimisation step ÷ a bare forward+backward of the classifier on the same 2·N·B inputs."""
    n = len(images)
    cfg = FidoConfig(samples=samples)
    targets = torch.zeros(n, dtype=torch.long)
    objective = FidoObjective(model, images, targets, cfg, list(range(n)))
    theta = objective.initial_theta()
    optimiser = torch.optim.Adam([theta], lr=cfg.lr, eps=cfg.adam_eps)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        objective.loss(theta, 10).backward()
        optimiser.step()

    bare_inputs = images.repeat(2 * samples, 1, 1, 1).requires_grad_(True)
    bare_targets = torch.zeros(len(bare_inputs), dtype=torch.long)

    def bare() -> None:
        bare_inputs.grad = None
        log_odds(model(bare_inputs), bare_targets).sum().backward()

    with Fido(model):  # freezes the classifier, as in a real run
        t_bare, t_step = [], []
        for _ in range(repeats):  # interleaved, so drifts of the shared machine hit both
            t_bare.append(timed(bare, 1))
            t_step.append(timed(step, 1))
    bare_s, step_s = statistics.median(t_bare), statistics.median(t_step)
    return {"images": n, "samples": samples, "bare_fwd_bwd_s": bare_s, "step_s": step_s,
            "overhead_ratio": step_s / bare_s}


def throughput(model: torch.nn.Module, images: torch.Tensor, cfg: FidoConfig, batches: list[int]) -> dict:
    """Images/s when N images share each step, and a plain one-image-at-a-time loop."""
    rows = {}
    with Fido(model, cfg) as fido:
        for n in batches:
            chunk = images[:n]
            began = time.perf_counter()
            fido.attribute(chunk, seeds=list(range(n)))
            rows[f"N={n}"] = n / (time.perf_counter() - began)
        began = time.perf_counter()
        for i in range(len(images[: max(batches)])):
            fido.attribute(images[i:i + 1], seeds=[i])
        rows["plain_loop"] = max(batches) / (time.perf_counter() - began)
    return {"config": f"B={cfg.samples}, {cfg.iterations} steps, mask {cfg.mask_size}", "images_per_s": rows}


def end_to_end(n_photos: int, cfg: FidoConfig) -> dict:
    """`fidoflow run` on ``n_photos`` photos (start-up included) vs a plain loop in one process."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, image in enumerate(photos(n_photos, (224, 224))):
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
        repo = str(Path(__file__).resolve().parent.parent)
        plain = [sys.executable, "-c",
                 (f"import sys; sys.path.insert(0, {repo!r}); from bench.engine import plain_run; "
                 f"plain_run({str(folder)!r}, {cfg.samples}, {cfg.iterations}, {cfg.mask_size})")]
        flow = [str(Path(sys.executable).parent / "fidoflow"), "run", str(folder), "--out",
                str(Path(tmp) / "run"), "--samples", str(cfg.samples), "--iterations",
                str(cfg.iterations), "--mask-size", str(cfg.mask_size), "--shard-size",
                str(max(1, n_photos // 2)), "--explain-only"]
        times = {}
        for name, command in (("plain_loop_s", plain), ("fidoflow_run_s", flow)):
            began = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name] = time.perf_counter() - began
    return {"photos": n_photos, **times, "ratio": times["fidoflow_run_s"] / times["plain_loop_s"]}


def plain_run(folder: str, samples: int, iterations: int, mask_size: int) -> None:
    """The reference: decode, classify and explain one image at a time, no batching, no workers."""
    from pipeline.images import decode_image, to_tensor

    model = load_model()
    cfg = FidoConfig(samples=samples, iterations=iterations, mask_size=mask_size)
    with Fido(model.module, cfg) as fido:
        for path in sorted(Path(folder).iterdir()):
            fido.attribute(to_tensor(decode_image(path), model.input_size)[None], seeds=[0])


def quality_vs_compute(n_images: int, samples: list[int], iterations: list[int]) -> list[dict]:
    bench = load_benchmark(n_images)
    rows = [{"method": "gradcam", **score(bench, GradCam(bench.model, bench.model.gradcam_layer))}]
    for sampler in ("scd", "cd"):
        for its in iterations:
            for b in samples:
                cfg = FidoConfig(sampler=sampler, samples=b, iterations=its)
                rows.append({"method": sampler, "samples": b, "iterations": its,
                             **score(bench, Fido(bench.model, cfg))})
    return rows


def gradient_variance(n_images: int, draws: int, samples: int) -> list[dict]:
    """Spread of d(data term)/d(theta) over independent noise draws at fixed theta, CD vs SCD
    with each sampler's own temperature (the variance lever, per ALGORITHM.md)."""
    bench = load_benchmark(n_images)
    rows = []
    for theta_value in (0.0, 2.0):
        for sampler in ("cd", "scd"):
            cfg = FidoConfig(sampler=sampler, samples=samples, lo_cap=None)  # plain objective
            with Fido(bench.model, cfg):
                objective = FidoObjective(bench.model, bench.data.images, bench.data.labels, cfg,
                                          list(range(n_images)))
                grads = []
                for _ in range(draws):
                    theta = torch.full_like(objective.initial_theta(), theta_value).requires_grad_(True)
                    objective.data_term(theta, objective.draw_noise()).sum().backward()
                    grads.append(theta.grad.detach().clone())
            g = torch.stack(grads)  # (draws, 2, N, m, m)
            cv = g.std(dim=0) / g.mean(dim=0).abs().clamp_min(1e-12)
            rows.append({"sampler": sampler, "theta": theta_value, "samples": samples,
                         "median_cv": cv.median().item(),
                         "share_abs_grad_below_1e-3": (g.abs() < 1e-3).float().mean().item()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    quick = args.quick
    model = load_model().module
    images = photos(8 if quick else 32, (224, 224))
    sections = {
        "machine": lambda: f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": lambda: date.today().isoformat(),
        "torch": lambda: torch.__version__,
        "overhead": lambda: overhead(model, images[:4], samples=2, repeats=2 if quick else 3),
        "throughput": lambda: throughput(model, images, FidoConfig(samples=2, iterations=2),
                                         [1, 4] if quick else [1, 8, 32]),
        "gradient_variance": lambda: gradient_variance(4 if quick else 16, 8 if quick else 32, 4),
        "quality_vs_compute": lambda: quality_vs_compute(8, [1, 4] if quick else [1, 2, 4, 8, 16],
                                                         [10] if quick else [10, 30]),
    }
    if not args.skip_end_to_end:
        sections["end_to_end"] = lambda: end_to_end(8, FidoConfig())
    for name, measure in sections.items():  # one JSON line per section, printed as it is done
        print(json.dumps({name: measure()}), flush=True)


if __name__ == "__main__":
    main()
