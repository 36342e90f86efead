"""Archive readers: detection, every format's columns, unsafe paths and duplicates as error rows,
a deterministic order, and the manifest's Arrow schema."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from fixtures_archives import CUB_CLASSES, coco_archive, csv_manifest, cub_tree, photo, save

from fidoflow.pipeline.archive.readers import (
    COLUMNS,
    ArchiveError,
    archive_root,
    detect_format,
    read_archive,
)
from fidoflow.pipeline.archive.readers.common import check_path
from fidoflow.storage import tables


def values(series: pd.Series) -> list:
    """A column as a list with None for missing values (None does not compare)."""
    return series.astype(object).where(series.notna(), None).tolist()


def by_id(frame: pd.DataFrame) -> dict[str, dict]:
    return {r["image_id"]: r for r in frame.to_dict("records")}


def imagefolder(root: Path) -> Path:
    for cls, n in (("zebra", 2), ("ant", 1)):
        for i in range(n):
            save(photo(20, 16, i), root / cls / f"{cls}{i}.png")
    return root


# --- detection ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, expected", [
    ("flat", "folder"), ("nested", "folder"), ("imagefolder", "imagefolder"),
    ("one-class", "folder"), ("cub", "cub"), ("coco-file", "coco"), ("coco-folder", "coco"),
    ("csv", "manifest"), ("parquet", "manifest"), ("manifest-folder", "manifest"),
])
def test_detect_format(kind: str, expected: str, tmp_path: Path) -> None:
    root = tmp_path / "src"
    source = root
    if kind == "flat":
        save(photo(), root / "a.jpg")
        save(photo(), root / "b" / "c.png")  # images at two depths: no classes
    elif kind == "nested":
        save(photo(), root / "x" / "y" / "a.png")
        save(photo(), root / "z" / "b.png")
    elif kind == "imagefolder":
        imagefolder(root)
        (root / "notes.csv").write_text("not a manifest\n")
    elif kind == "one-class":
        save(photo(), root / "only" / "a.png")
    elif kind == "cub":
        cub_tree(root)
    elif kind == "coco-file":
        source = coco_archive(root)
    elif kind == "coco-folder":
        coco_archive(root)
    elif kind in ("csv", "parquet", "manifest-folder"):
        save(photo(), root / "a.png")
        frame = pd.DataFrame({"path": ["a.png"]})
        if kind == "parquet":
            source = root / "list.parquet"
            frame.to_parquet(source)
        else:
            source = root / ("manifest.csv" if kind == "manifest-folder" else "list.csv")
            frame.to_csv(source, index=False)
            if kind == "manifest-folder":
                source = root
    assert detect_format(source) == expected


def test_missing_source_and_bad_options(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source folder not found"):
        read_archive(tmp_path / "nope")
    save(photo(), tmp_path / "a.png")
    with pytest.raises(ValueError, match="unknown format"):
        read_archive(tmp_path, format="tfrecord")
    with pytest.raises(ValueError, match="unknown split"):
        read_archive(tmp_path, split="val")
    with pytest.raises(ArchiveError, match="no train/test split"):
        read_archive(tmp_path, split="train")
    with pytest.raises(ArchiveError, match="of no format fidoflow reads"):
        detect_format(tmp_path / "a.png")


# --- folders ----------------------------------------------------------------------------------

def test_folder_rows_are_sorted_typed_and_no_file_is_opened(tmp_path: Path, monkeypatch) -> None:
    save(photo(30, 20), tmp_path / "b.JPG")
    save(photo(22, 11), tmp_path / "a" / "z.png")
    (tmp_path / "skip.txt").write_text("x")
    import builtins

    real_open = builtins.open
    opened: list[str] = []

    def watched(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", watched)
    frame = read_archive(tmp_path)
    monkeypatch.undo()
    assert not [f for f in opened if f.endswith((".JPG", ".png"))]  # the worker reads them
    assert list(frame.columns) == list(COLUMNS)
    assert {c: str(t) for c, t in frame.dtypes.items()} == COLUMNS
    assert frame["path"].tolist() == ["a/z.png", "b.JPG"]
    assert frame["image_id"].tolist() == ["a/z", "b"]
    assert frame["label"].isna().all() and frame["manifest_error"].isna().all()
    pd.testing.assert_frame_equal(frame, read_archive(tmp_path))  # deterministic


def test_imagefolder_labels_follow_sorted_class_names(tmp_path: Path) -> None:
    frame = read_archive(imagefolder(tmp_path / "src"))
    assert frame["label_name"].tolist() == ["ant", "zebra", "zebra"]
    assert frame["label"].tolist() == [0, 1, 1]


def test_forced_imagefolder_on_a_mixed_tree(tmp_path: Path) -> None:
    save(photo(), tmp_path / "loose.png")
    save(photo(), tmp_path / "cls" / "deep" / "a.png")
    frame = read_archive(tmp_path, format="imagefolder")
    rows = by_id(frame)
    assert pd.isna(rows["loose"]["label_name"]) and rows["cls/deep/a"]["label_name"] == "cls"


def test_same_stem_files_keep_their_suffix_as_id(tmp_path: Path) -> None:
    save(photo(), tmp_path / "a.png")
    save(photo(), tmp_path / "a.jpg")
    save(photo(), tmp_path / "b.png")
    frame = read_archive(tmp_path)
    assert frame["image_id"].tolist() == ["a.jpg", "a.png", "b"]
    assert frame["manifest_error"].isna().all()


def test_links_out_of_the_root_are_refused_but_listed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    save(photo(), root / "in.png")
    save(photo(), outside / "secret.png")
    save(photo(), outside / "dir" / "more.png")
    os.symlink(outside / "secret.png", root / "file-link.png")
    os.symlink(outside / "dir", root / "dir-link")
    os.symlink(root / "in.png", root / "inner-link.png")  # stays inside: fine
    os.symlink(root, root / "loop")  # a loop is cut, not followed forever
    rows = by_id(read_archive(root))
    assert set(rows) == {"in", "file-link", "dir-link", "inner-link"}  # dir-link: not walked
    assert rows["dir-link"]["manifest_error"] == "UnsafePath"  # the listing saw the link
    assert "outside the archive root" in rows["dir-link"]["manifest_message"]
    # a file link is a file to the listing: the worker that opens it refuses it
    assert pd.isna(rows["file-link"]["manifest_error"])
    assert check_path(os.path.realpath(root), "file-link.png")[0] == "UnsafePath"
    assert pd.isna(rows["inner-link"]["manifest_error"])
    assert check_path(os.path.realpath(root), "inner-link.png")[0] is None


@pytest.mark.parametrize("relative, error", [
    ("a.png", None), ("./x/../a.png", None), ("../a.png", "UnsafePath"),
    ("x/../../a.png", "UnsafePath"), ("/etc/passwd", "UnsafePath"), ("C:\\\\a.png", "UnsafePath"),
    ("~/a.png", "UnsafePath"), ("", "MissingPath"), (None, "MissingPath"),
    ("nope.png", "MissingFile"), ("x", "MissingFile"), ("a\x00.png", "UnsafePath"),
])
def test_check_path(relative, error, tmp_path: Path) -> None:
    save(photo(), tmp_path / "a.png")
    (tmp_path / "x").mkdir()
    kind, message, real = check_path(os.path.realpath(tmp_path), relative)
    assert kind == error
    assert (real is None) == (error is not None) and (message is None) == (error is None)


def test_the_worker_records_what_it_read(tmp_path: Path) -> None:
    from fidoflow.pipeline.analysis.explain import ShardResult, load_batch

    save(photo(30, 20), tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a picture")
    rows = [{"image_id": "a", "path": "a.png"}, {"image_id": "b", "path": "b.png"},
            {"image_id": "c", "path": "c.png"}]
    result = ShardResult()
    ok, images = load_batch(tmp_path, rows, (16, 16), result)
    assert ok == [0] and images.shape == (1, 3, 16, 16)
    a, b = result.images
    assert (a["width"], a["height"], a["bytes"]) == (30, 20, (tmp_path / "a.png").stat().st_size)
    assert a["sha256"] == hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    assert a["mtime_ns"] == (tmp_path / "a.png").stat().st_mtime_ns
    assert b["width"] is None and b["sha256"] == hashlib.sha256(b"not a picture").hexdigest()
    assert {e["image_id"]: e["error_type"] for e in result.errors} == {
        "b": "NotAnImage", "c": "MissingFile"}


# --- CUB ------------------------------------------------------------------------------------

def test_cub_labels_splits_boxes_and_parts(tmp_path: Path) -> None:
    frame = read_archive(cub_tree(tmp_path / "CUB_200_2011"))
    assert frame["image_id"].tolist() == ["1", "2", "3", "4"]
    assert frame["path"][0] == "images/001.Black_footed_Albatross/Black_footed_Albatross_0000.jpg"
    assert frame["label"].tolist() == [0, 0, 1, 1]
    assert frame["label_name"].tolist() == [CUB_CLASSES[0]] * 2 + [CUB_CLASSES[1]] * 2
    assert frame["split"].tolist() == ["train", "test", "train", "test"]
    first = frame.iloc[0]
    assert (first.box_x0, first.box_y0, first.box_x1, first.box_y1) == (6.0, 6.0, 26.0, 16.5)
    assert first.parts == [{"name": "back", "x": 10.0, "y": 5.0},
                           {"name": "beak", "x": 20.0, "y": 10.0},
                           {"name": "left eye", "x": 30.0, "y": 15.0}]
    assert [p["name"] for p in frame.iloc[1].parts] == ["back", "beak"]  # invisible: left out
    assert frame["manifest_error"].isna().all()


@pytest.mark.parametrize("split, ids", [("train", ["1", "3"]), ("test", ["2", "4"]),
                                        ("all", ["1", "2", "3", "4"])])
def test_cub_split_filter(split: str, ids: list[str], tmp_path: Path) -> None:
    assert read_archive(cub_tree(tmp_path), split=split)["image_id"].tolist() == ids


def test_cub_without_optional_files_and_with_a_missing_image(tmp_path: Path) -> None:
    root = cub_tree(tmp_path)
    for name in ("bounding_boxes.txt", "train_test_split.txt", "parts/parts.txt"):
        (root / name).unlink()
    for path in (root / "images").rglob("*_0001.jpg"):
        path.unlink()
    frame = read_archive(root)
    assert frame["box_x0"].isna().all() and frame["split"].isna().all()
    assert frame["parts"].tolist() == [None] * 4
    # missing images are listed; the worker that would open them reports them
    assert frame["manifest_error"].isna().all()
    assert [check_path(os.path.realpath(root), p)[0] for p in frame["path"]] == [
        None, "MissingFile", None, "MissingFile"]


def test_malformed_cub_metadata_names_file_and_line(tmp_path: Path) -> None:
    root = cub_tree(tmp_path)
    (root / "image_class_labels.txt").write_text("1 1\n2 x\n")
    with pytest.raises(ArchiveError, match=r"image_class_labels.txt line 2"):
        read_archive(root)
    (root / "classes.txt").unlink()
    with pytest.raises(ArchiveError, match="missing classes.txt"):
        read_archive(root, format="cub")


# --- COCO camera traps --------------------------------------------------------------------------

def test_coco_camera_traps(tmp_path: Path) -> None:
    path = coco_archive(tmp_path)
    frame = read_archive(path)
    rows = by_id(frame)
    assert frame["image_id"].tolist() == ["a", "b", "c", "d"]
    a = rows["a"]
    assert (a["label"], a["label_name"], a["empty"], a["n_annotations"]) == (1, "deer", False, 3)
    assert (a["box_x0"], a["box_y0"], a["box_x1"], a["box_y1"]) == (10, 5, 30, 20)
    assert (a["seq_id"], a["location"], a["datetime"]) == ("s1", "3", "2020-05-01 10:00:00")
    b = rows["b"]
    assert (b["label"], b["label_name"], b["empty"], b["n_annotations"]) == (0, "empty", True, 1)
    assert pd.isna(b["box_x0"])
    c = rows["c"]
    assert pd.isna(c["label"]) and pd.isna(c["empty"]) and c["n_annotations"] == 0
    assert pd.isna(rows["d"]["manifest_error"])  # missing: the worker reports it
    pd.testing.assert_frame_equal(frame, read_archive(tmp_path))  # the folder holding it


def test_coco_images_root_and_bad_json(tmp_path: Path) -> None:
    path = coco_archive(tmp_path / "imgs")
    moved = tmp_path / "meta" / "traps.json"
    moved.parent.mkdir()
    path.rename(moved)
    frame = read_archive(moved, images_root=tmp_path / "imgs")
    assert archive_root(moved) == moved.parent
    root = archive_root(moved, tmp_path / "imgs")
    assert [(root / p).exists() for p in frame["path"]] == [True, True, True, False]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ArchiveError, match="cannot read"):
        read_archive(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"type": "labelme"}))
    with pytest.raises(ArchiveError, match="no 'images' list"):
        read_archive(tmp_path / "other.json")


# --- CSV / Parquet manifests ----------------------------------------------------------------

def test_csv_manifest_refuses_unsafe_and_duplicate_rows(tmp_path: Path) -> None:
    path = csv_manifest(tmp_path / "arch", tmp_path / "outside")
    frame = read_archive(path)
    assert frame["image_id"].tolist() == ["A", "B", "up", "abs", "A2", "A#2", "gone"]
    assert values(frame["manifest_error"]) == [
        None, None, "UnsafePath", "UnsafePath", "DuplicatePath", "DuplicateImageId", None]
    assert "renamed 'A#2'" in frame["manifest_message"][5]
    assert frame["label_name"].tolist() == ["cat", "dog", "cat", "cat", "cat", "dog", "dog"]
    assert frame["label"].tolist() == [0, 1, 0, 0, 0, 1, 1]  # sorted names when no label column
    assert values(frame["split"])[:3] == ["train", "test", None]
    assert (frame.box_x0[0], frame.box_y0[0], frame.box_x1[0], frame.box_y1[0]) == (1, 2, 11, 7)
    assert frame["box_x0"].isna().tolist() == [False] + [True] * 6
    assert read_archive(path, split="test")["image_id"].tolist() == ["B"]


def test_parquet_manifest_with_box_columns_and_ids_kept_as_text(tmp_path: Path) -> None:
    save(photo(), tmp_path / "img" / "one.png")
    save(photo(), tmp_path / "img" / "two.png")
    pd.DataFrame({"path": ["img/one.png", "img/two.png"], "image_id": ["007", "008"],
                  "label": [3, None], "box_x0": [1.0, None], "box_y0": [2.0, None],
                  "box_x1": [3.0, None], "box_y1": [4.0, None], "extra": ["x", "y"]}
                 ).to_parquet(tmp_path / "m.parquet")
    frame = read_archive(tmp_path / "m.parquet")
    assert frame["image_id"].tolist() == ["007", "008"]
    assert values(frame["label"]) == [3, None] and "extra" not in frame.columns
    assert values(frame["box_x1"]) == [3.0, None]
    (tmp_path / "zeros.csv").write_text("path,image_id\nimg/one.png,007\n")
    assert read_archive(tmp_path / "zeros.csv")["image_id"].tolist() == ["007"]


def test_manifest_without_path_column_is_an_archive_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,label\na.png,1\n")
    with pytest.raises(ArchiveError, match="no 'path' column"):
        read_archive(tmp_path / "m.csv")


# --- the run's manifest table ---------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["cub", "coco", "csv", "folder"])
def test_every_reader_fits_the_manifest_schema(fixture: str, tmp_path: Path) -> None:
    from fidoflow.pipeline.config import RunConfig
    from fidoflow.pipeline.stages.prepare import model_of, write_manifest
    from fidoflow.storage.runfolder import RunFolder

    source = {"cub": lambda: cub_tree(tmp_path / "cub"),
              "coco": lambda: coco_archive(tmp_path / "coco"),
              "csv": lambda: csv_manifest(tmp_path / "csv", tmp_path / "out"),
              "folder": lambda: imagefolder(tmp_path / "folder")}[fixture]()
    config = RunConfig(source=str(source), root=str(tmp_path / "run"), model="synthetic-cnn",
                       shard_size=3)
    run = RunFolder(str(tmp_path / "run"))
    _, found = write_manifest(run, config, model_of(config))
    labels = found["labels"]
    table = run.read_table(tables.MANIFEST.path)
    assert table.schema.equals(tables.MANIFEST.schema)
    assert table.column("shard").to_pylist() == [i // 3 for i in range(table.num_rows)]
    assert labels["mode"] == "none" and labels["mapped"] == 0
    if fixture == "cub":
        parts = table.column("parts").to_pylist()[0]
        assert parts[0] == {"name": "back", "x": 10.0, "y": 5.0}
        assert table.column("parts").type == tables.MANIFEST.schema.field("parts").type
    assert pa.compute.all(pa.compute.is_null(table.column("model_label"))).as_py()
