"""The embedded default: scikit-image's bundled photos as an archive folder, and the demo table."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

DEMO_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "stereo_motorcycle")


def prepare_demo_archive(folder: Path) -> str:
    """Write the bundled photos as PNG files (once) and return the folder."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    for name in DEMO_PHOTOS:
        target = folder / f"{name}.png"
        if not target.exists():
            pixels = getattr(skimage.data, name)()
            pixels = pixels[0] if isinstance(pixels, tuple) else pixels
            Image.fromarray(pixels).save(target)
    return str(folder)


def mask_verdict(scalars: dict[str, float], target_prob: float) -> str:
    """"failed" when the SSR blend keeps less than half the target's clean probability, "ok"
    when it keeps more, "–" for methods without an SSR."""
    if "p_ssr" not in scalars:
        return "–"
    return "failed" if scalars["p_ssr"] < 0.5 * target_prob else "ok"


def print_demo_table(root: str) -> None:
    """Per image and method: the target class and its probability, the method's own per-image
    numbers (e.g. FIDO's p_ssr, p_sdr), whether a FIDO mask failed (its SSR blend keeps less
    than half the target's probability), and what the mask-guided re-classification answers
    (crop, crop+global; "=" when unchanged)."""
    from fidoflow.storage import parts, schemas
    from fidoflow.storage.runfolder import RunFolder
    from rich.console import Console
    from rich.table import Table

    run = RunFolder(root)
    predictions = parts.read_stage(run, "predictions", schemas.PREDICTIONS).to_pylist()
    reclassified = {(r["image_id"], r["method"], r["variant"]): r
                    for r in parts.read_stage(run, "reclassify", schemas.RECLASSIFY).to_pylist()}
    scalars = list(dict.fromkeys(k for row in predictions for k, _ in row["scalars"] or []))
    table = Table(title="fidoflow demo: target probability, each method's own numbers, and "
                        "the mask-guided re-classification")
    for column in ("image", "method", "target class", "p", *scalars, "mask", "crop", "crop+global"):
        table.add_column(column)

    def answer(row: dict, variant: str) -> str:
        hit = reclassified.get((row["image_id"], row["method"], variant))
        if hit is None:
            return "–"
        if hit["top1"] == row["target"]:
            return f"= ({hit['top1_prob']:.3f})"
        return f"{hit['top1_name'][:24]} ({hit['top1_prob']:.3f})"

    for row in sorted(predictions, key=lambda r: (r["image_id"], r["method"])):
        own = dict(row["scalars"] or [])
        table.add_row(row["image_id"], row["method"], row["target_name"][:32],
                      f"{row['target_prob']:.3f}",
                      *(f"{own[k]:.3g}" if k in own else "–" for k in scalars),
                      mask_verdict(own, row["target_prob"]),
                      answer(row, "crop"), answer(row, "crop+global"))
    Console().print(table)
    if run.exists("report.html"):
        Console().print(f"report: {run.url('report.html')}")
