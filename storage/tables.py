"""Every table of a run folder, declared once: where it lies, its Arrow schema with a sentence
per column, its key, and which stage writes it. The stages write and resume by these
declarations, the aggregate reads by them, and docs/tables.md's column tables are generated
from them (``python -m fidoflow.flows.docs``; tests/test_docs.py checks the page is current).

A table is either one file (``manifest.parquet``, ``summary.parquet``) or parts in a folder
(``predictions/part-00042.parquet``, merged into ``part-00000-00063.parquet``: storage/parts.py),
whose rows carry their ``shard``; a stage's part is written last, so its presence marks the
shard done for that stage. ``errors/`` holds the parts of several stages,
told apart by a name prefix. The ``metrics`` table's value columns are the registered metrics'
(fidoflow/pipeline/metrics/): storage declares the rest and ``with_columns`` adds them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import pyarrow as pa

Stage = Literal["prepare", "explain", "reclassify", "evaluate", "aggregate"]


@dataclass(frozen=True)
class Column:
    """A column of a run-folder table and what it means."""

    name: str
    type: pa.DataType
    doc: str

    @property
    def field(self) -> pa.Field:
        return pa.field(self.name, self.type)


@dataclass(frozen=True)
class Table:
    """One run-folder table: ``path`` is its file, or its folder of per-shard parts when
    ``sharded``; ``keys`` identify a row; ``stage`` writes it (``errors`` is written by every
    stage, each under its own ``error_prefix``)."""

    name: str
    path: str
    stage: Stage | tuple[Stage, ...]
    keys: tuple[str, ...]
    columns: tuple[Column, ...]
    doc: str
    sharded: bool = True

    @property
    def schema(self) -> pa.Schema:
        return pa.schema([c.field for c in self.columns])

    def with_columns(self, extra: tuple[Column, ...], before: str = "seconds") -> Table:
        """The table with ``extra`` columns inserted before the column ``before``."""
        names = [c.name for c in self.columns]
        at = names.index(before) if before in names else len(names)
        return replace(self, columns=(*self.columns[:at], *extra, *self.columns[at:]))


def _c(name: str, kind: pa.DataType, doc: str) -> Column:
    return Column(name, kind, doc)


S, I32, F32, F64, B = pa.string(), pa.int32(), pa.float32(), pa.float64(), pa.bool_()
WRITTEN_IN = _c("increment", I32, "the run of the folder (`increments`) that wrote the row")
PART = pa.struct([("name", pa.string()), ("x", pa.float32()), ("y", pa.float32())])

MANIFEST = Table("manifest", "manifest.parquet", "prepare", ("image_id",), (
    _c("image_id", S, "unique key of the row"),
    _c("path", S, "the image, relative to the archive root"),
    _c("label", I32, "the archive's class index"),
    _c("label_name", S, "the archive's class name"),
    _c("split", S, "`train`, `test`, ... as the archive names it"),
    _c("shard", I32, "the shard the row belongs to (the unit of resume; a task holds whole "
                     "shards): the rows an increment adds fill new shards after the folder's, "
                     "`shard_size` rows each, in listing order"),
    _c("increment", I32, "the run of the folder (`increments`) that listed the row first"),
    _c("box_x0", F32, "object box, left edge, pixels of the original image"),
    _c("box_y0", F32, "object box, top edge"),
    _c("box_x1", F32, "object box, right edge (x0 + width)"),
    _c("box_y1", F32, "object box, bottom edge"),
    _c("parts", pa.list_(PART), "visible part locations, pixels of the original image"),
    _c("empty", B, "camera traps: an empty frame"),
    _c("seq_id", S, "camera-trap sequence"),
    _c("location", S, "camera-trap site"),
    _c("datetime", S, "time stamp as given"),
    _c("n_annotations", I32, "COCO: the image's number of annotations"),
    _c("detection", I32, "MegaDetector output: the detection's index in its frame's list"),
    _c("detection_conf", F32, "MegaDetector output: its confidence"),
    _c("crop_x0", F32, "the region the row is explained on (a detection, or an annotated box "
                       "with --crop boxes), left edge; the worker cuts the tightest square "
                       "around it, clipped to the picture"),
    _c("crop_y0", F32, "its top edge"),
    _c("crop_x1", F32, "its right edge"),
    _c("crop_y1", F32, "its bottom edge"),
    _c("crop_units", S, "`fraction` (of the frame: MegaDetector) or `pixels` (of the original "
                        "image); null: the whole picture"),
    _c("model_label", I32, "the label in the model's class space; null where no mapping "
                           "exists. Accuracy is measured against this column only"),
    _c("manifest_error", S, "why the row was refused before decoding; null otherwise"),
    _c("manifest_message", S, "the details"),
), "One row per input image, by shard; the mask row of the k-th row of shard s is "
   "s × shard_size + k (the last shard of an increment may be short: its chunk's other rows "
   "hold NaN maps and an empty `image_id`). Written in row groups; no file is opened to make "
   "it (`images` records the files). A later increment appends rows; none moves or goes.",
   sharded=False)

INCREMENTS = Table("increments", "increments", "prepare", ("increment",), (
    _c("increment", I32, "1 for the run that made the folder, then one more per run into it"),
    _c("started", S, "when it began listing the archive (UTC, ISO 8601)"),
    _c("ended", S, "when its last stage finished; null while it runs or when it was stopped"),
    _c("images_listed", I32, "manifest rows the archive's listing gave this time"),
    _c("images_new", I32, "images it listed for the first time (manifest rows it added)"),
    _c("images_changed", I32, "images whose file changed since it was read (shards redone)"),
    _c("images_removed", I32, "images the archive stopped listing in this increment"),
    _c("images_back", I32, "removed images it listed again"),
    _c("images_explained", I32, "images its explain stage ran"),
    _c("images_failed", I32, "of those, images that ended as `errors` rows"),
    _c("first_shard", I32, "the first shard it added (null when it added none)"),
    _c("code_version", S, "fidoflow's version (and git commit where known)"),
    _c("flow_run_id", S, "the Prefect flow run that ran it (null outside Prefect)"),
), "One file per run of the folder (`increments/increment-XXXXX.parquet`), written when it "
   "starts and again when it ends.", sharded=False)

REMOVED = Table("removed", "removed.parquet", "prepare", ("image_id",), (
    _c("image_id", S, "a manifest id whose file the archive no longer lists"),
    _c("removed_in", I32, "the increment that found it gone"),
    _c("last_seen", S, "when an increment last listed it (its start, UTC)"),
), "The folder's images its archive no longer lists; their rows and maps stay. Rewritten by "
   "each increment (an image listed again leaves it); the summary leaves them out.",
   sharded=False)

IMAGES = Table("images", "images", "explain", ("image_id",), (
    _c("image_id", S, "manifest id"),
    _c("path", S, "the file, relative to the archive root"),
    _c("bytes", pa.int64(), "its size when the explain stage read it"),
    _c("mtime_ns", pa.int64(), "its modification time then (nanoseconds since the epoch)"),
    _c("sha256", S, "hash of the bytes it read"),
    _c("width", I32, "width as displayed (EXIF orientation applied); null when it did not "
                     "decode"),
    _c("height", I32, "height as displayed; null when it did not decode"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "One row per file the explain stage read (refused and missing files have none): what a "
   "rerun compares with the file to redo the shards whose files changed.")

PREDICTIONS = Table("predictions", "predictions", "explain", ("image_id", "method"), (
    _c("image_id", S, "manifest id"),
    _c("method", S, "the method instance's name in the run (`scd`, `gradcam`, or a variant's "
                    "own name such as `knockoff`)"),
    _c("kind", S, "the registered method it runs (`fidoflow methods` lists them)"),
    _c("target", I32, "the class explained: the top-1 prediction, or the manifest label with "
                      "`--target label`"),
    _c("target_source", S, "`predicted` or `label` (with `--target label`, unlabelled images "
                           "fall back to `predicted`)"),
    _c("target_name", S, "its class name"),
    _c("target_prob", F32, "its softmax probability on the whole image"),
    _c("top5", pa.list_(I32), "the five most probable classes"),
    _c("top5_prob", pa.list_(F32), "their probabilities"),
    _c("scalars", pa.map_(S, F64), "the method's own per-image numbers by name; FIDO (`scd`, "
       "`cd`, `fido-public`): `p_ssr` (target probability under the deterministic SSR blend, "
       "high: SSR sufficient), `p_sdr` (under the SDR blend, low: SDR destroys it), "
       "`iterations` (steps the image took; fewer than `--iterations` when `--stop-change` "
       "stopped it early); empty for the gradient methods"),
    _c("seconds", F32, "the method's compute time per image (the shard's time for the method "
                       "/ its images)"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "One row per (image, method) the explain stage explained.")

SAG = Table("sag", "sag", "explain", ("image_id", "method", "node"), (
    _c("image_id", S, "manifest id"),
    _c("method", S, "the method instance's name in the run"),
    _c("node", I32, "node id, unique within (image, method)"),
    _c("patches", pa.list_(I32), "the patches kept, row-major indices over the grid (patch `k` "
                                 "is row `k // grid`, column `k % grid` of the model input)"),
    _c("probability", F32, "the target's probability with only these patches kept (the rest "
                           "blurred)"),
    _c("parent", I32, "the root's `node` for a child; null for a root"),
    _c("root", B, "true for a root"),
    _c("grid", I32, "patches per side (7 by default)"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "Graph nodes of the methods that explain with a graph (`sag`), written by the explain "
   "stage beside `predictions`.")

CONCEPTS = Table("concepts", "concepts", "explain", ("image_id", "method", "concept"), (
    _c("image_id", S, "manifest id"),
    _c("method", S, "the concept method's instance in the run (`xnn-spatial`, `xnn`, `nmf`, or "
                    "a variant)"),
    _c("target", I32, "the class explained (`predictions.target`)"),
    _c("concept", I32, "the concept's number within the target class's concepts, from 1; its "
                       "map is `masks.zarr/<method>/c<concept>`"),
    _c("activation", F32, "how strongly the concept is present in the image: XNN's `z` (>= 0; "
                          "the spatial XNN's: its map's mean), NMF's mean coefficient over the "
                          "feature map"),
    _c("weight", F32, "what one unit of it adds to the target's logit: XNN's head weight `w`, "
                      "NMF's gradient of the logit along the concept"),
    _c("contribution", F32, "activation × weight: the concept's share of the logit; XNN: a "
                            "class's contributions sum to `reconstructed` − `bias`"),
    _c("bias", F32, "XNN: the head's bias; NMF: the logit minus the contributions"),
    _c("reconstructed", F32, "XNN: the logit its concepts rebuild (sum of the contributions + "
                             "bias); NMF: the logit"),
    _c("logit", F32, "the classifier's own logit of the target"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "One row per (image, concept method, concept of the target class), written by the explain "
   "stage beside `predictions` (`fidoflow concepts` trains what the methods read).")

ERRORS = Table("errors", "errors", ("explain", "reclassify", "evaluate"), ("image_id", "stage"), (
    _c("image_id", S, "manifest id"),
    _c("path", S, "path relative to the archive root"),
    _c("stage", S, "`manifest`, `decode` (explain), `reclassify` or `evaluate`"),
    _c("error_type", S, "exception class (`CorruptImage`, `MissingFile`, ...)"),
    _c("message", S, "what went wrong"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "One row per image a stage could not use.")

RECLASSIFY = Table("reclassify", "reclassify", "reclassify", ("image_id", "method", "variant"), (
    _c("image_id", S, "manifest id"),
    _c("method", S, "the mask's method instance (`scd`, `gradcam`, ...), or `none` for the "
                    "baseline"),
    _c("variant", S, "`global` (baseline), `crop`, `blend` or `crop+global`"),
    _c("top1", I32, "predicted class (index into the model's class names)"),
    _c("top1_name", S, "its name"),
    _c("top1_prob", F32, "its probability (for `crop+global`: of the averaged softmax)"),
    _c("top5", pa.list_(I32), "the five most probable classes"),
    _c("top5_prob", pa.list_(F32), "their probabilities"),
    _c("label", I32, "the manifest's `label` (archive class index)"),
    _c("label_name", S, "the manifest's `label_name`"),
    _c("model_label", I32, "the manifest's `model_label` (the label in the model's class "
                           "space)"),
    _c("correct", B, "`top1 == model_label`; null without a `model_label`"),
    _c("correct_top5", B, "`model_label` among `top5`; null without a `model_label`"),
    _c("crop_x0", I32, "crop box, left edge, pixels of the original image; null for `global` "
                       "and `blend`"),
    _c("crop_y0", I32, "crop box, top edge"),
    _c("crop_x1", I32, "crop box, right edge (exclusive)"),
    _c("crop_y1", I32, "crop box, bottom edge (exclusive)"),
    _c("seconds", F32, "the shard's re-classification time spread over its rows"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "One baseline row per explained image (`none`/`global`) and one row per (method, variant).")

METRICS = Table("metrics", "metrics", "evaluate", ("image_id", "method"), (
    _c("image_id", S, "manifest id"),
    _c("method", S, "the method instance (`scd`, `gradcam`, ...)"),
    _c("target", I32, "the class the mask explains (`predictions.target`)"),
    _c("seconds", F32, "evaluation time per image"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "One row per (image, method); between `target` and `seconds`, one column per value of "
   "each registered metric.")

PARTS = Table("parts", "parts", "evaluate", ("image_id", "method", "part"), (
    _c("image_id", S, "manifest id"),
    _c("method", S, "the method instance (`scd`, `gradcam`, ...)"),
    _c("part", S, "the part's name (CUB: `back`, `beak`, `belly`, ..., `throat`)"),
    _c("x", F32, "its centre, model-input pixels (x right)"),
    _c("y", F32, "its centre, model-input pixels (y down)"),
    _c("radius", F32, "the disc counted as the part: 0.1 × the object box's geometric mean "
                      "side, in model-input pixels (0.1 × the input's shorter side without a "
                      "box)"),
    _c("share", F32, "share of the map's mass inside the disc (discs may overlap)"),
    _c("nearest", B, "true for the visible part nearest to the map's maximum"),
    _c("shard", I32, "the shard (the unit of resume) the row belongs to"),
    WRITTEN_IN,
), "One row per (image, method, visible part) of the images with part locations (CUB's "
   "`parts/part_locs.txt`, a manifest's `parts`).")

SUMMARY = Table("summary", "summary.parquet", "aggregate",
                ("section", "group_by", "group_value", "method", "variant", "statistic"), (
    _c("section", S, "`run`, `accuracy`, `accuracy_gain`, `metric`, `parts`, `errors` or "
                     "`timing` (below)"),
    _c("group_by", S, "`overall`, or the grouping: `class`, `split` (`accuracy`, "
                      "`accuracy_gain`, `metric`, `parts`), `increment` (`run`, `accuracy`: "
                      "the images each run of the folder listed first), `stage` or "
                      "`error_type` (`errors`, `timing`)"),
    _c("group_value", S, "`all` for `overall`; else the class (`label_name`, else "
                         "`model_label`), split, increment number, stage, or "
                         "`stage/error_type`"),
    _c("method", S, "`none` for the baseline, else a method instance; null where not "
                    "applicable"),
    _c("variant", S, "`global`, `crop`, `blend`, `crop+global`; null where not applicable"),
    _c("statistic", S, "what `value` is (below)"),
    _c("value", F64, "the statistic"),
    _c("ci_low", F64, "lower bound of its 95 % confidence interval; null for counts and "
                      "timings"),
    _c("ci_high", F64, "upper bound"),
    _c("n", pa.int64(), "images behind the value (for `errors` and `run`: images in the run)"),
), "Every aggregate of the run in one tidy long table.", sharded=False)

TABLES = (MANIFEST, INCREMENTS, REMOVED, IMAGES, PREDICTIONS, SAG, CONCEPTS, ERRORS, RECLASSIFY,
          METRICS, PARTS, SUMMARY)
BY_NAME = {table.name: table for table in TABLES}

# The table whose part marks a shard done for each stage, and the name prefix of the stage's
# own parts in errors/ (explain's are plain ``part-XXXXX``).
DONE_BY = {"explain": PREDICTIONS, "reclassify": RECLASSIFY, "evaluate": METRICS}
ERROR_PREFIX = {"explain": "part", "reclassify": "reclassify-part", "evaluate": "evaluate-part"}
SHARD_STAGES = tuple(DONE_BY)  # the stages of a shard, in the order they run
