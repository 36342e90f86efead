"""The embedded default archive: scikit-image's bundled photos as a folder of PNG files."""

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
