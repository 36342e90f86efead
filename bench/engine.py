"""Engine benchmark (issue 3): classifier preparation, overhead, throughput, gradient variance,
quality vs compute, saliency on photo objects; on request early stopping, samplers on photos and
the end-to-end `fidoflow run` against a plain loop.

    .venv/bin/python bench/engine.py [--quick] [--sections a,b|all] > engine.jsonl

The default sections take ~10 min on the 2-core box; ``all`` adds ~30 min. Each section prints one
JSON line as it ends; what is compared is measured side by side in one run, and ratios, not
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
from fidoflow.pipeline.methods.fido import Fido, FidoConfig, FidoObjective, SlotAdam
from fidoflow.pipeline.methods.gradcam import GradCam, GradCamConfig
from fidoflow.pipeline.models.loading import load_model
from fidoflow.pipeline.perturbation import log_odds


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

    from fidoflow.pipeline.archive.demo import DEMO_PHOTOS
    from fidoflow.pipeline.imaging.decode import to_tensor

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
    theta = objective.initial_theta().detach()
    adam = SlotAdam(theta, cfg.lr, cfg.adam_eps)
    ramp = torch.ones(n)

    def step() -> None:  # what Fido.attribute does per step, the stopping check aside
        leaf = theta.requires_grad_(True)
        (grad,) = torch.autograd.grad(objective.loss(leaf, ramp), leaf)
        adam.step(theta.detach_(), grad)

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


def preparation(loaded, images: torch.Tensor, samples: int, rounds: int) -> dict:
    """One optimisation step (N images × B samples) on the classifier as loaded, with its
    BatchNorms and SAME paddings folded (pipeline/models/fusion.py), and folded + channels_last (what
    ``LoadedModel.on`` gives a run); interleaved rounds, medians, ratios to the first."""
    from fidoflow.pipeline.models.fusion import fuse_frozen

    fused, _ = fuse_frozen(loaded.module, images[:2])
    variants = {"as_loaded": loaded.module, "folded": fused,
                "folded_channels_last": loaded.on(torch.device("cpu"))}
    cfg = FidoConfig(samples=samples)
    targets = torch.zeros(len(images), dtype=torch.long)

    def step_time(module: torch.nn.Module) -> float:
        with Fido(module, cfg):
            objective = FidoObjective(module, images, targets, cfg, list(range(len(images))))
            theta, ramp = objective.initial_theta(), torch.ones(len(images))
            return timed(lambda: objective.loss(theta, ramp).backward(), 1)

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, module in variants.items():
            times[name].append(step_time(module))
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {"images": len(images), "samples": samples, "step_s": medians,
            "speed_up": {name: medians["as_loaded"] / t for name, t in medians.items()}}


def throughput(loaded, images: torch.Tensor, cfg: FidoConfig, batches: list[int], rounds: int) -> dict:
    """Images/s when N images share each step on the prepared classifier (fused, channels_last),
    and a plain one-image-at-a-time loop on the classifier as loaded. Rounds interleave every
    configuration, so warm-up (first round) and drifts of the shared machine hit all of them; medians."""
    prepared = loaded.on(torch.device("cpu"))
    n_max = max(batches)

    def batched(n: int) -> float:
        with Fido(prepared, cfg) as fido:
            began = time.perf_counter()
            for start in range(0, n_max, n):
                fido.attribute(images[start:start + n], seeds=list(range(start, start + n)))
            return n_max / (time.perf_counter() - began)

    def plain(module: torch.nn.Module) -> float:
        with Fido(module, cfg) as fido:
            began = time.perf_counter()
            for i in range(n_max):
                fido.attribute(images[i:i + 1], seeds=[i])
            return n_max / (time.perf_counter() - began)

    runs = {f"N={n}": (lambda n=n: batched(n)) for n in batches}
    runs["plain_loop"] = lambda: plain(loaded.module)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            rates[name].append(run())
    return {"config": f"B={cfg.samples}, {cfg.iterations} steps, mask {cfg.mask_size}, {n_max} images",
            "images_per_s": {name: statistics.median(r) for name, r in rates.items()}}


def gpu_throughput(loaded, images: torch.Tensor, slots: list[int], total: int = 256,
                   compile_model: bool = False) -> dict:
    """Images/s on the GPU at the issue's goal settings (EfficientNet-Lite0, 224², B = 2, 30 steps),
    ``total`` images streamed through N slots; the goal is ≥ 100 images/s on one H100."""
    from fidoflow.pipeline.models.device import resolve_device

    device = resolve_device("auto")
    if device.type != "cuda":
        return {"skipped": "no CUDA device"}
    prepared = loaded.on(device, compile_model)
    batch = images.repeat(-(-total // len(images)), 1, 1, 1)[:total].to(device)
    cfg = FidoConfig(samples=2, iterations=30)
    rates = {}
    with Fido(prepared, cfg) as fido:
        targets = fido.predict(batch)
        for n in slots:
            fido.attribute(batch[:n], targets[:n], list(range(n)), batch_size=n)  # warm-up, autotuning
            torch.cuda.synchronize()
            began = time.perf_counter()
            fido.attribute(batch, targets, list(range(total)), batch_size=n)
            torch.cuda.synchronize()
            rates[f"N={n}"] = total / (time.perf_counter() - began)
    return {"device": torch.cuda.get_device_name(device), "compile": compile_model,
            "config": f"B=2, 30 steps, {total} images", "images_per_s": rates}


def end_to_end(n_photos: int, cfg: FidoConfig) -> dict:
    """`fidoflow run` on ``n_photos`` photos (start-up included) vs a plain loop in one process."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, image in enumerate(photos(n_photos, (224, 224))):
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
        repo = str(Path(__file__).resolve().parent.parent)

        def plain(prepared: bool) -> list[str]:
            return [sys.executable, "-c",
                    (f"import sys; sys.path.insert(0, {repo!r}); from bench.engine import plain_run; "
                     f"plain_run({str(folder)!r}, {cfg.samples}, {cfg.iterations}, {cfg.mask_size}, "
                     f"{prepared})")]

        flow = [str(Path(sys.executable).parent / "fidoflow"), "run", str(folder), "--out",
                str(Path(tmp) / "run"), "--samples", str(cfg.samples), "--iterations",
                str(cfg.iterations), "--mask-size", str(cfg.mask_size), "--shard-size",
                str(max(1, n_photos // 2)), "--explain-only"]
        times = {}
        commands = {"plain_loop_s": plain(False), "fidoflow_run_s": flow,
                    "plain_loop_prepared_model_s": plain(True)}
        for name, command in commands.items():
            began = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name] = time.perf_counter() - began
    return {"photos": n_photos, **times, "ratio": times["fidoflow_run_s"] / times["plain_loop_s"],
            "ratio_to_prepared_plain_loop": times["fidoflow_run_s"] / times["plain_loop_prepared_model_s"]}


def plain_run(folder: str, samples: int, iterations: int, mask_size: int, prepared: bool = False) -> None:
    """The reference: decode, classify and explain one image at a time, no batching, no workers,
    on the classifier as loaded (or, to separate the flow's gains from the classifier's, prepared
    as the flow prepares it)."""
    from fidoflow.pipeline.imaging.decode import decode_image, to_tensor

    model = load_model()
    module = model.on(torch.device("cpu")) if prepared else model.module
    cfg = FidoConfig(samples=samples, iterations=iterations, mask_size=mask_size)
    with Fido(module, cfg) as fido:
        for path in sorted(Path(folder).iterdir()):
            fido.attribute(to_tensor(decode_image(path), model.input_size)[None], seeds=[0])


def quality_vs_compute(n_images: int, samples: list[int], iterations: list[int]) -> list[dict]:
    bench = load_benchmark(n_images)
    rows = [{"method": "gradcam", **score(bench, GradCam(bench.model, GradCamConfig(bench.model.gradcam_layer)))}]
    for sampler in ("scd", "cd"):
        for its in iterations:
            for b in samples:
                cfg = FidoConfig(sampler=sampler, samples=b, iterations=its)
                rows.append({"method": sampler, "samples": b, "iterations": its,
                             **score(bench, Fido(bench.model, cfg))})
    return rows


def photo_quality(prepared: torch.nn.Module, images: torch.Tensor, cfg: FidoConfig) -> dict:
    """Deletion/insertion of FIDO's joint map for each photo's predicted class, mean steps and
    seconds per photo, one image per slot as on a CPU."""
    from fidoflow.pipeline.metrics.deletion_insertion import deletion_insertion

    with Fido(prepared, cfg) as fido:
        targets = fido.predict(images)
        began = time.perf_counter()
        out = fido.attribute(images, targets, list(range(len(images))), batch_size=1)
        seconds = (time.perf_counter() - began) / len(images)
    curves = deletion_insertion(prepared, images, out.maps["joint"], targets, steps=32)
    return {"deletion": curves.deletion_auc.mean().item(), "insertion": curves.insertion_auc.mean().item(),
            "mean_iterations": out.scalars["iterations"].float().mean().item(), "sec_per_image": seconds}


def early_stopping(loaded, photo_images: torch.Tensor, runs: list[tuple[int, float | None]]) -> list[dict]:
    """Quality and cost of stopping each image once its masks settle, against fixed iterations:
    on the synthetic benchmark (16 scenes, ground truth) and on photos (EfficientNet-Lite0)."""
    bench = load_benchmark(16)
    prepared = loaded.on(torch.device("cpu"))
    rows = []
    for iterations, tolerance in runs:
        cfg = FidoConfig(iterations=iterations, stop_change=tolerance)
        rows.append({"iterations": iterations, "stop_change": tolerance,
                     **{f"synthetic_{k}": v for k, v in score(bench, Fido(bench.model, cfg)).items()},
                     **{f"photos_{k}": v for k, v in photo_quality(prepared, photo_images, cfg).items()}})
    return rows


def photo_samplers(loaded, photo_images: torch.Tensor, samples: list[int]) -> list[dict]:
    """The paper's claim on photos: SCD at small B against CD at large B (30 steps, defaults)."""
    prepared = loaded.on(torch.device("cpu"))
    return [{"method": sampler, "samples": b,
             **photo_quality(prepared, photo_images, FidoConfig(sampler=sampler, samples=b))}
            for sampler in ("scd", "cd") for b in samples]


# Objects of the bundled photos that fill only part of the frame, boxed by hand on the originals
# (x0, y0, x1, y1 in pixels): the cup (with handle and spoon), the rocket, the motorcycle.
PHOTO_OBJECTS = {"coffee": (170, 15, 425, 325), "rocket": (295, 120, 350, 410),
                 "stereo_motorcycle": (90, 90, 690, 450)}


def photo_share(loaded) -> list[dict]:
    """Share of the saliency inside each photo's object box (its predicted class), FIDO defaults
    against Grad-CAM, with the box's area fraction as the uniform map's score."""
    import skimage.data
    from PIL import Image

    from fidoflow.pipeline.imaging.decode import to_tensor
    from fidoflow.pipeline.metrics.box import share_inside

    images, boxes = [], []
    for name, (x0, y0, x1, y1) in PHOTO_OBJECTS.items():
        pixels = getattr(skimage.data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # a stereo pair: the left view
        height, width = pixels.shape[:2]
        images.append(to_tensor(Image.fromarray(pixels), loaded.input_size))
        sx, sy = loaded.input_size[1] / width, loaded.input_size[0] / height
        boxes.append([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
    images, boxes = torch.stack(images), torch.tensor(boxes)
    prepared = loaded.on(torch.device("cpu"))
    with Fido(prepared, FidoConfig()) as fido:
        targets = fido.predict(images)
        out = fido.attribute(images, targets, list(range(len(images))), batch_size=1)
    with GradCam(loaded.module, GradCamConfig("net._conv_head")) as cam:
        grad_cam = cam.attribute(images, targets).maps["joint"]
    size = tuple(loaded.input_size)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (size[0] * size[1])
    rows = []
    for i, name in enumerate(PHOTO_OBJECTS):
        rows.append({"photo": name, "target": loaded.class_names[int(targets[i])],
                     "box_area": area[i].item(),
                     **{method: share_inside(maps[i:i + 1], boxes[i:i + 1], size).item()
                        for method, maps in (("scd_joint", out.maps["joint"]), ("scd_ssr", out.maps["ssr"]),
                                             ("gradcam", grad_cam))}})
    return rows


def gradient_variance(n_images: int, draws: int, samples: int) -> list[dict]:
    """Spread of d(data term)/d(theta) over independent noise draws at fixed theta, CD vs SCD
    with each sampler's own temperature (the variance lever, per docs/method.md)."""
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


DEFAULT_SECTIONS = ("preparation", "overhead", "throughput", "gradient_variance", "quality_vs_compute",
                    "photo_share")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                        help="comma list of the sections to measure, or all")
    args = parser.parse_args()
    quick = args.quick
    loaded = load_model()
    images = photos(8 if quick else 32, (224, 224))
    sections = {
        "preparation": lambda: preparation(loaded, images[:1], samples=4, rounds=3 if quick else 5),
        "overhead": lambda: overhead(loaded.on(torch.device("cpu")), images[:4], samples=2,
                                     repeats=2 if quick else 3),
        "throughput": lambda: throughput(loaded, images, FidoConfig(samples=2, iterations=2),
                                         [1, 4] if quick else [1, 8, 32], rounds=2 if quick else 3),
        "gradient_variance": lambda: gradient_variance(4 if quick else 16, 8 if quick else 32, 4),
        "quality_vs_compute": lambda: quality_vs_compute(8, [1, 4] if quick else [1, 2, 4, 8, 16],
                                                         [10] if quick else [10, 30]),
        "early_stopping": lambda: early_stopping(
            loaded, images[:4 if quick else 8],
            [(30, None), (30, 0.005)] if quick else [(30, None), (30, 0.005), (30, 0.003), (60, None), (60, 0.002)]),
        "gpu_throughput": lambda: gpu_throughput(loaded, images, [8, 32, 128]),
        "photo_share": lambda: photo_share(loaded),
        "photo_samplers": lambda: photo_samplers(loaded, images[:5], [1, 4] if quick else [1, 4, 16]),
        "end_to_end": lambda: end_to_end(8, FidoConfig(iterations=5 if quick else 30)),
    }
    print(json.dumps({"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                      "date": date.today().isoformat(), "torch": torch.__version__}), flush=True)
    names = list(sections) if args.sections == "all" else args.sections.split(",")
    for name in names:  # one JSON line per section, printed as it is done
        print(json.dumps({name: sections[name]()}), flush=True)


if __name__ == "__main__":
    main()
