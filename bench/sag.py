"""Structured attention graphs: cost per image, how often an image has several roots, and the
deletion/insertion of SAG's joint map beside SCD's on the same images.

    .venv/bin/python bench/sag.py                         # demo photos with Lite0 + synthetic set
    .venv/bin/python bench/sag.py --synthetic 0 --scd-iterations 10   # photos only, quicker SCD

Two sets: scikit-image's demo photos squashed to EfficientNet-Lite0's 224² input (the published
SAG code took 43–98 s per ImageNet image), and ``--synthetic`` scenes of the synthetic benchmark
with its classifier (96² input; a seed it never trained on). Each set's top-1 class is explained
by ``sag`` (default SagConfig) and ``scd`` (default FidoConfig, ``--scd-iterations`` to change
its steps); both joint maps go through the same deletion/insertion (pipeline.analysis.evaluate,
50 steps, blur). Seconds per image are SAG's wall time over the set, ``--batch`` images per
``explain`` call (their candidates share classifier batches): on a loaded machine print them as
measured under load and re-time on a quiet one.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from fidoflow.pipeline.analysis.evaluate import EvaluateConfig, evaluate_masks
from fidoflow.pipeline.methods import parse_methods
from fidoflow.pipeline.methods.base import Attribution


def photos(size: tuple[int, int], resize: str) -> torch.Tensor:
    """The demo photos as model inputs."""
    import skimage.data
    from PIL import Image

    from fidoflow.pipeline.archive.demo import DEMO_PHOTOS
    from fidoflow.pipeline.imaging.decode import to_tensor

    pictures = []
    for name in DEMO_PHOTOS:
        pixels = getattr(skimage.data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels
        pictures.append(to_tensor(Image.fromarray(np.asarray(pixels)).convert("RGB"), size, resize))
    return torch.stack(pictures)


def explain(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor, entry: str,
            batch: int) -> tuple[Attribution, float]:
    spec = next(iter(parse_methods(entry).values()))
    began = time.perf_counter()
    with spec.build(model) as method:
        out = method.attribute(images, targets, list(range(len(images))), batch, 28)
    return out, (time.perf_counter() - began) / len(images)


def measure(title: str, model: torch.nn.Module, images: torch.Tensor, scd_iterations: int | None,
            batch: int) -> None:
    with torch.no_grad():
        targets = model(images).argmax(dim=1)
    sag, sag_seconds = explain(model, images, targets, "sag", batch)
    scd_entry = "scd" if scd_iterations is None else f"scd:iterations={scd_iterations}"
    scd, scd_seconds = explain(model, images, targets, scd_entry, batch)
    roots = sag.scalars["roots"].numpy()
    print(f"\n### {title}: {len(images)} images of {tuple(images.shape[-2:])}\n")
    print(f"SAG seconds per image {sag_seconds:.2f} (SCD {scd_seconds:.2f}, {scd_entry}); "
          f"classifier calls per image {sag.scalars['forwards'].mean():.0f}; "
          f"roots per image {roots.mean():.2f}; images with more than one root "
          f"{int((roots > 1).sum())} of {len(roots)}; without any {int((roots == 0).sum())}")
    print(f"per image: roots {roots.astype(int).tolist()}, classifier calls "
          f"{sag.scalars['forwards'].numpy().astype(int).tolist()}")
    print("\n| method | deletion AUC ↓ | insertion AUC ↑ |\n|---|---|---|")
    for name, out in (("sag", sag), ("scd", scd)):
        metrics = evaluate_masks(model, images, out.maps["joint"], targets,
                                 config=EvaluateConfig()).values
        print(f"| {name} | {metrics['deletion_auc'].mean():.3f} | "
              f"{metrics['insertion_auc'].mean():.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=32, help="synthetic scenes (0: none)")
    parser.add_argument("--seed", type=int, default=5, help="scene seed (not a training seed)")
    parser.add_argument("--scd-iterations", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8, help="images per explain call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-photos", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} at start "
          "(timings under load: re-time on a quiet machine)")
    if not args.no_photos:
        from fidoflow.pipeline.models.loading import load_model

        lite0 = load_model("efficientnet-lite0")
        module = lite0.on(torch.device("cpu"))
        measure("demo photos, EfficientNet-Lite0", module,
                photos(lite0.input_size, lite0.resize), args.scd_iterations, args.batch)
    if args.synthetic:
        from fidoflow.pipeline.archive.synthetic import make_dataset
        from fidoflow.pipeline.models.synthetic_cnn import load_synthetic_classifier

        module, _ = load_synthetic_classifier()
        scenes = make_dataset(args.synthetic, args.seed).images
        measure("synthetic benchmark, its classifier", module.eval(), scenes,
                args.scd_iterations, args.batch)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
