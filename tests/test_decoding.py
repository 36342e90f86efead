"""Robust decoding: every pixel mode rendered right, every broken file a typed error, big pictures
shrunk under the cap, bombs refused, and nothing of a dirty archive lost between the stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from fixtures_archives import BROKEN, dirty_folder, gradient16, photo, save, write_mode_file
from PIL import Image

from fidoflow.pipeline.imaging import decode as images
from fidoflow.pipeline.imaging.decode import (
    DecodeLimits,
    crop_box,
    decode_image,
    shrink_to,
    to_tensor,
)


def decoded(kind: str, tmp_path: Path) -> np.ndarray:
    img = decode_image(write_mode_file(kind, tmp_path))
    assert img.mode == "RGB"
    return np.asarray(img)


@pytest.mark.parametrize("kind", ["I;16", "I;16B", "I", "F"])
def test_high_bit_depth_gradients_span_the_full_8_bit_range(kind: str, tmp_path: Path) -> None:
    arr = decoded(kind, tmp_path)
    row = arr[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # scaled, not clipped (clipping gives 255 everywhere)
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 200
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_sixteen_bit_scaling_is_exact(tmp_path: Path) -> None:
    arr = decoded("I;16", tmp_path)[0, :, 0].astype(int)
    expected = np.rint(gradient16()[0] / 257.0).astype(int)
    np.testing.assert_array_equal(arr, expected)


def test_float_pictures_outside_0_1_are_stretched(tmp_path: Path) -> None:
    row = decoded("F-wide", tmp_path)[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and np.all(np.diff(row) >= 0)


@pytest.mark.parametrize("kind, left, right", [
    ("L", (128, 128, 128), (128, 128, 128)),
    ("1", (255, 255, 255), (0, 0, 0)),
    ("RGBA", (255, 0, 0), (255, 255, 255)),  # transparent half composited on white
    ("LA", (0, 0, 0), (255, 255, 255)),
    ("P", (0, 255, 0), (255, 255, 255)),  # palette index with transparency -> white
    ("CMYK", (255, 0, 0), (255, 0, 0)),
])
def test_modes_render_as_displayed(kind: str, left: tuple, right: tuple, tmp_path: Path) -> None:
    arr = decoded(kind, tmp_path).astype(int)
    tolerance = 6 if kind == "CMYK" else 0  # JPEG
    assert np.abs(arr[5, 2] - left).max() <= tolerance
    assert np.abs(arr[5, -2] - right).max() <= tolerance


def test_half_transparent_pixels_blend_with_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    arr = np.asarray(decode_image(save(img, tmp_path / "half.png"))).astype(int)
    assert np.abs(arr - 127).max() <= 1


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = write_mode_file("exif", tmp_path)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)
    img = decode_image(path)
    arr = np.asarray(img).astype(int)
    assert img.size == (20, 40)  # width and height swapped
    assert arr[2, -3, 0] > 200 and arr[2, -3, 2] < 60  # the red corner is now top-right
    assert arr[2, 2, 2] > 200  # blue where it was not
    assert img.info["original_size"] == (20, 40)


@pytest.mark.parametrize("kind", ["gif", "webp"])
def test_animations_give_their_first_frame(kind: str, tmp_path: Path) -> None:
    arr = decoded(kind, tmp_path).astype(int)
    assert np.abs(arr - (255, 0, 0)).max() <= 2


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_their_own_error_type(name: str, tmp_path: Path) -> None:
    writer, expected = BROKEN[name]
    path = writer(tmp_path / name)
    with pytest.raises(images.DecodeError) as caught:
        decode_image(path)
    assert type(caught.value).__name__ == expected


def test_missing_file_is_a_decode_error(tmp_path: Path) -> None:
    with pytest.raises(images.MissingFile):
        decode_image(tmp_path / "nope.jpg")


def test_bomb_limit_is_configurable(tmp_path: Path) -> None:
    path = save(photo(200, 100), tmp_path / "p.png")
    with pytest.raises(images.DecompressionBomb, match="19999"):
        decode_image(path, DecodeLimits(bomb_pixels=19_999))
    assert decode_image(path, DecodeLimits(bomb_pixels=20_000)).size == (200, 100)


def test_a_limit_above_pillows_own_lets_big_headers_through(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    path = BROKEN["bomb.png"][0](tmp_path / "big.png")  # 400 MP declared, no pixel data
    with pytest.raises(images.DecodeError) as caught:
        decode_image(path, DecodeLimits(max_pixels=1000, bomb_pixels=500_000_000))
    assert not isinstance(caught.value, images.DecompressionBomb)  # refused later: no pixels


@pytest.mark.parametrize("fmt, size, cap", [
    ("JPEG", (1200, 900), 100_000), ("JPEG", (1000, 333), 40_000), ("PNG", (640, 480), 50_000),
    ("WEBP", (500, 700), 30_000), ("JPEG", (4000, 300), 1_200_000),
])
def test_big_pictures_are_shrunk_under_the_cap(fmt: str, size: tuple, cap: int,
                                                tmp_path: Path) -> None:
    path = save(photo(*size), tmp_path / f"big.{fmt.lower()}", format=fmt)
    img = decode_image(path, DecodeLimits(max_pixels=cap))
    w, h = img.size
    assert w * h <= cap and w * h > cap / 4.5  # under the cap, not needlessly small
    assert abs(w / h - size[0] / size[1]) < 0.05 * size[0] / size[1]
    assert img.info["original_size"] == size


def test_jpeg_draft_decodes_at_a_dct_scale_keeping_min_size(tmp_path: Path) -> None:
    path = save(photo(1600, 1200), tmp_path / "big.jpg", quality=90)
    assert decode_image(path, min_size=(200, 200)).size == (400, 300)  # 1/4: 300 >= 200
    assert decode_image(path, min_size=(400, 400)).size == (800, 600)
    assert decode_image(path).size == (1600, 1200)
    full = np.asarray(decode_image(path).resize((400, 300), Image.Resampling.BOX), float)
    draft = np.asarray(decode_image(path, min_size=(200, 200)), float)
    assert np.abs(full - draft).mean() < 3  # the same picture


@pytest.mark.parametrize("seed", range(6))
def test_any_mode_and_size_decodes_to_rgb_under_the_cap(seed: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    w, h = int(rng.integers(1, 300)), int(rng.integers(1, 300))
    mode = ["L", "RGB", "RGBA", "P", "I;16", "F", "CMYK", "LA"][seed % 8]
    base = photo(w, h, seed)
    img = (Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
           if mode == "I;16" else Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255)
           if mode == "F" else base.convert(mode))
    fmt = {"CMYK": "JPEG", "F": "TIFF"}.get(mode, "PNG")
    cap = int(rng.integers(50, 5000))
    out = decode_image(save(img, tmp_path / f"x.{fmt.lower()}", format=fmt),
                       DecodeLimits(max_pixels=cap))
    assert out.mode == "RGB" and out.size[0] * out.size[1] <= max(cap, 1)
    tensor = to_tensor(out, (16, 12))
    assert tensor.shape == (3, 16, 12) and 0 <= float(tensor.min()) <= float(tensor.max()) <= 1


def test_shrink_keeps_small_pictures() -> None:
    img = photo(10, 10)
    assert shrink_to(img, 100) is img


def test_crop_mode_keeps_the_centre() -> None:
    assert crop_box((200, 100), (50, 50)) == (50, 0, 150, 100)
    assert crop_box((100, 300), (20, 40)) == (0, 125, 100, 175)
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (100, 0, 200, 100))
    assert torch.allclose(to_tensor(img, (8, 8), "crop")[0], torch.ones(8, 8))
    assert to_tensor(img, (8, 8), "squash")[0, :, 0].max() == 0
    with pytest.raises(ValueError, match="resize mode"):
        to_tensor(img, (8, 8), "stretch")


def test_load_batch_turns_any_exception_into_an_error_row(monkeypatch, tmp_path: Path) -> None:
    from fidoflow.pipeline.analysis import explain

    save(photo(), tmp_path / "ok.png")
    save(photo(), tmp_path / "boom.png")
    real = explain.decode_row

    def flaky(path, *args, **kwargs):
        if Path(path).name == "boom.png":
            raise MemoryError("simulated")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(explain, "decode_row", flaky)
    result = explain.ShardResult()
    rows = [{"image_id": "ok", "path": "ok.png"}, {"image_id": "boom", "path": "boom.png"},
            {"image_id": "up", "path": "../ok.png"}]
    ok, batch = explain.load_batch(tmp_path, rows, (8, 8), result)
    assert ok == [0] and batch.shape == (1, 3, 8, 8)
    assert [(e["image_id"], e["stage"], e["error_type"]) for e in result.errors] == [
        ("boom", "decode", "MemoryError"), ("up", "manifest", "UnsafePath")]


def explain_everything(source: Path, run: Path, **options: object) -> tuple[list, list, list]:
    """prepare_run + explain_shard for every shard with the small synthetic CNN: manifest rows,
    predictions and errors."""
    from fidoflow.pipeline import stages
    from fidoflow.pipeline.config import RunConfig
    from fidoflow.pipeline.methods import parse_methods
    from fidoflow.storage import parts, tables
    from fidoflow.storage.runfolder import RunFolder

    config = RunConfig(source=str(source), root=str(run), model="synthetic-cnn", shard_size=4,
                       batch_size=4, mask_size=4,
                       methods=parse_methods("scd,cd", {"iterations": 1, "samples": 1,
                                                        "mask_size": 4}),
                       **options)
    config, shards = stages.prepare_run(config)
    for shard in range(shards):
        stages.explain_shard(config, shard)
    folder = RunFolder(config.root)
    return (pq.read_table(run / "manifest.parquet").to_pylist(),
            parts.read_parts(folder, tables.PREDICTIONS).to_pylist(),
            parts.read_parts(folder, tables.ERRORS).to_pylist(),
            parts.read_parts(folder, tables.IMAGES).to_pylist())


def assert_nothing_lost(manifest: list, predictions: list, errors: list) -> set[str]:
    """Each manifest row has a prediction for every method, or exactly one error row, never
    both, never neither. Returns the ids that were explained."""
    ids = [r["image_id"] for r in manifest]
    assert len(ids) == len(set(ids))
    predicted = {m: [p["image_id"] for p in predictions if p["method"] == m] for m in ("scd", "cd")}
    assert sorted(predicted["scd"]) == sorted(predicted["cd"])
    assert len(predicted["scd"]) == len(set(predicted["scd"]))
    failed = [e["image_id"] for e in errors]
    assert len(failed) == len(set(failed))
    assert set(predicted["scd"]).isdisjoint(failed)
    assert set(predicted["scd"]) | set(failed) == set(ids)
    return set(predicted["scd"])


def test_every_row_of_a_dirty_folder_ends_in_predictions_or_errors(tmp_path: Path) -> None:
    from fidoflow.pipeline import stages
    from fidoflow.pipeline.config import RunConfig

    expected = dirty_folder(tmp_path / "dirty", outside=tmp_path / "outside")
    save(photo(), tmp_path / "dirty" / "good1.png")  # same stem: ids keep their suffixes
    manifest, predictions, errors, images = explain_everything(
        tmp_path / "dirty", tmp_path / "run", max_pixels=2000)
    assert len(manifest) == 15
    assert len(assert_nothing_lost(manifest, predictions, errors)) == 15 - len(expected)
    assert {e["path"]: e["error_type"] for e in errors} == expected
    stage_of = {e["path"]: e["stage"] for e in errors}
    assert stage_of["link-out.jpg"] == "manifest" and stage_of["broken/notes.jpg"] == "decode"
    read = {r["path"]: r for r in images}
    assert "link-out.jpg" not in read  # never opened
    assert (read["sub/rotated.jpg"]["width"], read["sub/rotated.jpg"]["height"]) == (20, 40)
    assert read["broken/notes.jpg"]["width"] is None and read["broken/notes.jpg"]["bytes"] > 0
    ids = {r["image_id"] for r in manifest}
    assert {"good1.jpg", "good1.png", "broken/truncated.jpg", "anim"} <= ids
    config = RunConfig(source=str(tmp_path / "dirty"), root=str(tmp_path / "run"))
    assert stages.manifest_report(config)["refused"] == {}  # the link: refused by the worker


@pytest.mark.parametrize("kind", ["csv", "coco", "cub"])
def test_every_reader_loses_nothing_between_the_stages(kind: str, tmp_path: Path) -> None:
    from fixtures_archives import coco_archive, csv_manifest, cub_tree

    if kind == "csv":
        source = csv_manifest(tmp_path / "arch", tmp_path / "outside")
        refused = {"up", "abs", "A2", "A#2", "gone"}
    elif kind == "coco":
        source = coco_archive(tmp_path / "coco")
        refused = {"d"}
    else:
        source = cub_tree(tmp_path / "cub")
        (tmp_path / "cub" / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_0001.jpg"
         ).write_bytes(b"")
        refused = {"4"}
    manifest, predictions, errors, _ = explain_everything(source, tmp_path / "run")
    explained = assert_nothing_lost(manifest, predictions, errors)
    assert {e["image_id"] for e in errors} == refused
    assert explained == {r["image_id"] for r in manifest} - refused
