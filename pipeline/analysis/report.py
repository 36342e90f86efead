"""The run report: one self-contained static HTML file (pictures inlined as base64 data URIs).

Sections: the headline (images, labels, accuracy of the baseline and of the best variant), the
accuracy per variant as a chart and a table with confidence intervals, the gains against the
baseline, the mean deletion/insertion curves per method, the mask-quality means, errors and
timings, the methods side by side (mask quality and seconds per image), a gallery of images with
every method's maps as heat maps and each method's crop box (and the roots of a structured
attention graph with their children), and the images
whose label changed after re-classification (right→wrong, wrong→right; without labels, those
whose top-1 changed). Works on arrays and DataFrames; the caller gathers them and writes the
string wherever it likes. A script sets ``data-loaded="true"`` on ``<body>`` once every picture
has decoded (``"false"`` if one failed), which a headless browser test reads back.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fidoflow.pipeline.metrics import columns

BOX_COLOUR = (0, 255, 120)
MAP_SIDE = 150  # gallery heat maps, pixels (the original picture is shown at full thumbnail size)


@dataclass
class MethodMaps:
    """One method's maps (h, w) in [0, 1] for one image (``joint`` first, then the method's own),
    and its crop box in thumbnail pixels."""

    maps: dict[str, np.ndarray]
    box: tuple[float, float, float, float] | None = None
    titles: dict[str, str] = field(default_factory=dict)  # a map's caption, e.g. a concept's


@dataclass
class GraphRoot:
    """One root of a structured attention graph (SAG): the patches it keeps on a ``grid`` ×
    ``grid`` lattice of the picture, the target's probability with only them kept, and its
    children (the root with one patch removed) as (patches, probability)."""

    grid: int
    patches: list[int]
    probability: float
    children: list[tuple[list[int], float]]


@dataclass
class GalleryItem:
    """An image of the gallery: thumbnail (H, W, 3) uint8, caption lines, maps per method, and
    the graph roots of the methods that explain with one."""

    image_id: str
    picture: np.ndarray
    caption: list[str]
    methods: dict[str, MethodMaps] = field(default_factory=dict)
    graphs: dict[str, list[GraphRoot]] = field(default_factory=dict)


@dataclass
class FlipItem:
    """An image whose re-classified label differs from the baseline's."""

    image_id: str
    method: str
    variant: str
    direction: str  # "right→wrong", "wrong→right" or "changed" (no label)
    picture: np.ndarray
    caption: list[str]
    box: tuple[float, float, float, float] | None = None


@dataclass
class FrameItem:
    """A camera-trap frame (thumbnail) and its detections: each one's box in thumbnail pixels,
    its joint map and a caption."""

    path: str
    picture: np.ndarray
    detections: list[tuple[tuple[float, ...], np.ndarray, str]]


@dataclass
class ConceptItem:
    """One concept of a class: its mean contribution to the class's logit over the class's
    images, its share of their summed contributions, and the image where it counts most, with
    the concept's map over it."""

    class_name: str
    method: str
    concept: int
    mean_contribution: float
    share: float
    images: int
    image_id: str
    picture: np.ndarray


@dataclass
class Curves:
    """Mean deletion and insertion curves of one method over the fraction of pixels changed."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    n: int


# --- pictures ------------------------------------------------------------------------------

def data_uri(picture: np.ndarray, fmt: str = "JPEG", quality: int = 85) -> str:
    """(H, W, 3) uint8 as a base64 data URI (JPEG for photographs, PNG for charts)."""
    img = Image.fromarray(np.ascontiguousarray(picture))
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        img.save(buf, "PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def thumbnail(picture: np.ndarray, longest: int = 224) -> tuple[np.ndarray, float]:
    """The picture shrunk so its longest side is at most ``longest``; and the scale applied."""
    h, w = picture.shape[:2]
    scale = min(1.0, longest / max(h, w))
    if scale == 1.0:
        return picture, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BILINEAR,
                                                      reducing_gap=2.0)), scale


def overlay(picture: np.ndarray, saliency: np.ndarray, cmap: str = "turbo",
            alpha: float = 0.7) -> np.ndarray:
    """A heat map readable at a glance: the map (resized bilinearly, scaled to its own 99th
    percentile, so that gradient maps with tiny values or a few outlying cells show their
    structure) colour-mapped over a dimmed grey version of the picture; cold regions stay
    faint, hot ones opaque."""
    import matplotlib

    h, w = picture.shape[:2]
    sal = np.nan_to_num(np.asarray(saliency, dtype=np.float32), nan=0.0).clip(0, None)
    sal = sal / max(float(np.percentile(sal, 99)), float(sal.max()) * 1e-3, 1e-12)
    sal = np.asarray(Image.fromarray(sal, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    sal = sal.clip(0, 1)
    grey = (picture[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114]))[..., None]
    base = 40 + 0.6 * grey
    colours = matplotlib.colormaps[cmap](sal)[..., :3] * 255
    weight = alpha * (0.2 + 0.8 * sal)[..., None]
    return (base * (1 - weight) + colours * weight).round().clip(0, 255).astype(np.uint8)


def draw_box(picture: np.ndarray, box: Sequence[float] | None,
             colour: tuple[int, int, int] = BOX_COLOUR) -> np.ndarray:
    """A copy of the picture with ``box`` (x0, y0, x1, y1, pixel edges) outlined."""
    if box is None:
        return picture
    img = Image.fromarray(np.ascontiguousarray(picture))
    width = max(1, round(max(img.size) / 110))
    x0, y0, x1, y1 = box
    ImageDraw.Draw(img).rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour,
                                  width=width)
    return np.asarray(img)


PART_COLOUR = (255, 230, 0)


def draw_parts(picture: np.ndarray, points: Sequence[tuple[str, float, float]]) -> np.ndarray:
    """A copy of the picture with each part (name, x, y in its pixels) marked by a dot and its
    name's first letters."""
    if not points:
        return picture
    img = Image.fromarray(np.ascontiguousarray(picture))
    draw = ImageDraw.Draw(img)
    r = max(2, round(max(img.size) / 90))
    for name, x, y in points:
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(0, 0, 0), fill=PART_COLOUR)
        draw.text((x + r + 1, y - r - 1), name[:5], fill=PART_COLOUR)
    return np.asarray(img)


def increment_html(summary: pd.DataFrame, removed: int = 0) -> str:
    """The folder's last increment beside the whole archive: how many images it brought, how
    many failed, and the full image's top-1 on them and on all (empty for a folder of one run)."""
    runs = summary[(summary["section"] == "run") & (summary["group_by"] == "increment")]
    if runs["group_value"].nunique() < 2:
        return ""
    last = max(runs["group_value"], key=int)
    value = runs[runs["group_value"] == last].set_index("statistic")["value"]
    top1 = summary[(summary["section"] == "accuracy") & (summary["statistic"] == "top1")
                   & (summary["method"] == "none") & (summary["variant"] == "global")]
    mine = top1[(top1["group_by"] == "increment") & (top1["group_value"] == last)]
    everyone = top1[top1["group_by"] == "overall"]
    accuracy = (f" Top-1 of the full image on them: {_ci(mine.iloc[0])}; on the whole archive: "
                f"{_ci(everyone.iloc[0])}." if len(mine) and len(everyone) else "")
    gone = (f" {_images(removed)} the archive no longer lists left out (their rows stay)."
            if removed else "")
    return (f"<h2>Last increment (run {html.escape(last)} of this folder)</h2><p>"
            f"{_images(int(value.get('images', 0)))} arrived, {int(value.get('errors', 0))} of "
            f"them failed.{accuracy}{gone}</p>")


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def part_table(summary: pd.DataFrame) -> str:
    """Per method a class × part table of the map's mean share near each part (section
    ``parts``), each cell shaded by its share: which parts the model uses for a species."""
    rows = summary[(summary["section"] == "parts") & (summary["group_by"] == "class")]
    if rows.empty:
        return ""
    out = []
    for method, cell in rows.groupby("method", sort=True):
        pivot = cell.pivot_table(index="group_value", columns="statistic", values="value")
        top = max(float(np.nanmax(pivot.to_numpy())), 1e-9)
        body = []
        for group, values in pivot.iterrows():
            cells = []
            for part in pivot.columns:
                v = values[part]
                shade = 0 if pd.isna(v) else round(200 * float(v) / top)
                cells.append(f"<td style='background:rgb({255 - shade},{255 - shade // 3},255)'>"
                             f"{_fmt(v, False)}</td>")
            body.append(f"<tr><td>{html.escape(str(group))}</td>{''.join(cells)}</tr>")
        head = "".join(f"<th>{html.escape(str(p))}</th>" for p in pivot.columns)
        out.append(f"<h3>{html.escape(str(method))}</h3><table class=num><thead><tr><th>class</th>"
                   f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    return "".join(out)


# --- charts ----------------------------------------------------------------------------------

def _figure_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"


def accuracy_chart(summary: pd.DataFrame, statistic: str = "top1") -> str | None:
    """Bar chart (PNG data URI) of overall accuracy per (method, variant) with CI whiskers; the
    baseline as a horizontal band. None when no image has a label."""
    from matplotlib.figure import Figure

    rows = summary[(summary["section"] == "accuracy") & (summary["group_by"] == "overall")
                   & (summary["statistic"] == statistic)]
    if rows.empty:
        return None
    base = rows[rows["method"] == "none"]
    others = rows[rows["method"] != "none"].sort_values(["method", "variant"])
    labels = [f"{m}\n{v}" for m, v in zip(others["method"], others["variant"], strict=True)]
    fig = Figure(figsize=(max(4.0, 0.9 * len(labels) + 2), 3.2))
    ax = fig.subplots()
    if not base.empty:
        b = base.iloc[0]
        ax.axhspan(b["ci_low"], b["ci_high"], color="0.85", zorder=0)
        ax.axhline(b["value"], color="0.35", lw=1.2, zorder=1,
                   label=f"baseline (global) {b['value']:.1%}")
    x = np.arange(len(others))
    values = others["value"].to_numpy(dtype=float)
    err = np.stack([values - others["ci_low"].to_numpy(dtype=float),
                    others["ci_high"].to_numpy(dtype=float) - values])
    ax.bar(x, values, color="#3b7dd8", zorder=2, yerr=np.nan_to_num(err), capsize=3)
    for xi, v in zip(x, values, strict=True):
        ax.text(xi, v + 0.01, f"{v:.1%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(f"{statistic} accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{statistic} accuracy per re-classification variant (95 % CI)", fontsize=10)
    return _figure_uri(fig)


def curves_chart(curves: dict[str, Curves]) -> str | None:
    """Mean deletion and insertion curves per method (PNG data URI); None without curves."""
    from matplotlib.figure import Figure

    if not curves:
        return None
    fig = Figure(figsize=(8, 3.2))
    axes = fig.subplots(1, 2, sharey=True)
    for method, c in sorted(curves.items()):
        del_auc = np.trapezoid(c.deletion, c.fractions)
        ins_auc = np.trapezoid(c.insertion, c.fractions)
        axes[0].plot(c.fractions, c.deletion, label=f"{method} (AUC {del_auc:.3f})")
        axes[1].plot(c.fractions, c.insertion, label=f"{method} (AUC {ins_auc:.3f})")
    for ax, title in zip(axes, ("deletion (lower is better)", "insertion (higher is better)"),
                         strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of pixels changed")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("target probability (mean)")
    return _figure_uri(fig)


def patch_mask(shape: tuple[int, int], grid: int, patches: Sequence[int]) -> np.ndarray:
    """(H, W) bool: the pixels of ``patches`` on a ``grid`` × ``grid`` lattice (the cells SAG
    keeps: nearest-neighbour, as the method builds them)."""
    h, w = shape
    cells = np.zeros(grid * grid, bool)
    cells[list(patches)] = True
    rows = np.minimum(np.arange(h) * grid // h, grid - 1)
    cols = np.minimum(np.arange(w) * grid // w, grid - 1)
    return cells.reshape(grid, grid)[rows[:, None], cols[None, :]]


def kept_view(picture: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The picture with only ``keep`` in full colour, the rest faded to a pale grey."""
    faded = 0.25 * picture[..., :3].astype(np.float32) + 150
    return np.where(keep[..., None], picture[..., :3], faded).astype(np.uint8)


def graph_chart(picture: np.ndarray, root: GraphRoot, title: str) -> str:
    """One SAG root as a small figure (PNG data URI): left, the picture with only the root's
    patches kept and its probability; right, each child (one patch removed, outlined in red)
    with the probability that remains and the drop, the most needed patch first."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    h, w = picture.shape[:2]
    children = sorted(root.children, key=lambda c: c[1])
    cols = min(4, max(1, len(children)))
    rows = max(1, -(-len(children) // cols))
    fig = Figure(figsize=(2.6 + 1.35 * cols, max(2.7, 1.45 * rows)))
    spec = fig.add_gridspec(rows, 2 + cols, width_ratios=[1.0, 0.92] + [1.0] * cols)
    ax = fig.add_subplot(spec[:, :2])
    ax.imshow(kept_view(picture, patch_mask((h, w), root.grid, root.patches)))
    ax.set_title(f"{title}\n{len(root.patches)} patches, p = {root.probability:.2f}",
                 fontsize=8)
    ax.axis("off")
    for k, (patches, prob) in enumerate(children):
        child = fig.add_subplot(spec[k // cols, 2 + k % cols])
        child.imshow(kept_view(picture, patch_mask((h, w), root.grid, patches)))
        removed = sorted(set(root.patches) - set(patches))
        for patch in removed:
            r, c = divmod(patch, root.grid)
            child.add_patch(Rectangle((c * w / root.grid - 0.5, r * h / root.grid - 0.5),
                                      w / root.grid, h / root.grid, fill=False,
                                      edgecolor="red", lw=1.5))
        child.set_title(f"p {prob:.2f} (−{root.probability - prob:.2f})", fontsize=7)
        child.axis("off")
    fig.subplots_adjust(wspace=0.08, hspace=0.3)
    return _figure_uri(fig)


# --- tables ----------------------------------------------------------------------------------

def _fmt(value: float | None, percent: bool) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{value:.1%}" if percent else f"{value:.3f}"


def _ci(row: pd.Series, percent: bool = True) -> str:
    if pd.isna(row["ci_low"]):
        return _fmt(row["value"], percent)
    return (f"{_fmt(row['value'], percent)} <span class=ci>[{_fmt(row['ci_low'], percent)}, "
            f"{_fmt(row['ci_high'], percent)}]</span>")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def accuracy_table(summary: pd.DataFrame, group_by: str = "overall") -> str:
    rows = summary[(summary["section"] == "accuracy") & (summary["group_by"] == group_by)]
    if rows.empty:
        return ""
    out = []
    keys = ["group_value", "method", "variant"]
    for (group, method, variant), cell in rows.groupby(keys, sort=True):
        by_stat = {r["statistic"]: r for _, r in cell.iterrows()}
        top1, top5 = by_stat.get("top1"), by_stat.get("top5")
        out.append(([html.escape(str(group))] if group_by != "overall" else []) + [
            html.escape(method), html.escape(variant),
            _ci(top1) if top1 is not None else "–", _ci(top5) if top5 is not None else "–",
            str(int(top1["n"])) if top1 is not None else "0"])
    header = (["group"] if group_by != "overall" else []) + [
        "method", "variant", "top-1 [95 % CI]", "top-5 [95 % CI]", "images"]
    return _table(header, out, "num")


def gain_table(summary: pd.DataFrame) -> str:
    rows = summary[(summary["section"] == "accuracy_gain") & (summary["group_by"] == "overall")]
    if rows.empty:
        return ""
    out = []
    for (method, variant), cell in rows.groupby(["method", "variant"], sort=True):
        s = {r["statistic"]: r for _, r in cell.iterrows()}
        count = {name: str(int(s[name]["value"])) if name in s else "–"
                 for name in ("wrong_to_right", "right_to_wrong")}
        out.append([html.escape(method), html.escape(variant),
                    _ci(s["top1_gain"]) if "top1_gain" in s else "–",
                    _ci(s["top5_gain"]) if "top5_gain" in s else "–",
                    count["wrong_to_right"], count["right_to_wrong"],
                    _ci(s["top1_changed"]) if "top1_changed" in s else "–",
                    str(int(s["top1_changed"]["n"])) if "top1_changed" in s else "0"])
    return _table(["method", "variant", "top-1 gain [95 % CI]", "top-5 gain [95 % CI]",
                   "wrong→right", "right→wrong", "top-1 changed", "images"], out, "num")



def metric_table(summary: pd.DataFrame) -> str:
    """Every method side by side: its mask-quality means (95 % CI) and the seconds per image
    it took to explain (explain stage, compute time)."""
    rows = summary[(summary["section"] == "metric") & (summary["group_by"] == "overall")]
    timing = summary[(summary["section"] == "timing") & (summary["group_value"] == "explain")
                     & (summary["statistic"] == "seconds_per_image")]
    seconds = {r["method"]: r["value"] for _, r in timing.iterrows()}
    methods = sorted(set(rows["method"].dropna()) | set(seconds))
    if not methods:
        return ""
    stats = list(dict.fromkeys(rows["statistic"]))
    out = []
    for method in methods:
        s = {r["statistic"]: r for _, r in rows[rows["method"] == method].iterrows()}
        n = max((int(r["n"]) for r in s.values()), default=0)
        out.append([f"<b>{html.escape(method)}</b>"]
                   + [_ci(s[k], percent=False) if k in s else "–" for k in stats]
                   + [_fmt(seconds.get(method), False), str(n)])
    titles = {c.name: c.title for c in columns()}
    header = ["method", *(titles.get(k, k) for k in stats), "seconds / image", "images"]
    return _table(header, out, "num")


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def simple_table(summary: pd.DataFrame, section: str) -> str:
    rows = summary[summary["section"] == section]
    if rows.empty:
        return "<p>none</p>"
    out = [[html.escape(_text(r["group_by"])), html.escape(_text(r["group_value"])),
            html.escape(_text(r["method"])), html.escape(_text(r["statistic"])),
            _fmt(r["value"], False) if section == "timing" else str(int(r["value"])),
            str(int(r["n"]))] for _, r in rows.iterrows()]
    return _table(["group_by", "group", "method", "statistic", "value", "n"], out, "num")


# --- the page --------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1640px}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ddd;padding-bottom:.2em}
.meta{color:#555;font-size:.9em} .ci{color:#777;font-size:.85em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f3f3f3}
table.num td{font-variant-numeric:tabular-nums}
.headline{font-size:1.05em;background:#f6f9ff;border:1px solid #d6e2f7;padding:8px 12px}
.gallery .row{display:flex;gap:6px;align-items:flex-start;margin:10px 0;flex-wrap:wrap}
figure{margin:0;text-align:center;font-size:.78em;color:#444}
figure img{display:block;max-width:224px;height:auto;border:1px solid #ccc}
.caption{width:200px;font-size:.78em;color:#333;align-self:center}
.gallery .own{margin:-4px 0 14px 206px} .gallery .own figure img{max-width:120px}
.gallery .graphs{margin:-4px 0 14px 206px} .gallery .graphs figure img{max-width:520px}
.flips{display:flex;flex-wrap:wrap;gap:8px}
.flips figure img{max-width:150px}
.frames{display:flex;flex-wrap:wrap;gap:10px} .frames figure img{max-width:480px}
.frames figure{max-width:482px}
.flips figure{width:152px}
.concepts .row{display:flex;flex-wrap:wrap;gap:8px} .concepts figure{width:152px}
.concepts figure img{max-width:150px}
details{margin:.6em 0}
"""

LOADED_SCRIPT = """
(function(){
  function check(){
    var imgs=Array.prototype.slice.call(document.images);
    if(!imgs.every(function(i){return i.complete;})){setTimeout(check,20);return;}
    var ok=imgs.every(function(i){return i.naturalWidth>0;});
    document.body.setAttribute('data-images',String(imgs.length));
    document.body.setAttribute('data-loaded',ok?'true':'false');
  }
  if(document.readyState==='complete'){check();}else{window.addEventListener('load',check);}
})();
"""


def _figure(uri: str, caption: str, alt: str) -> str:
    return (f"<figure><img src='{uri}' alt='{html.escape(alt)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def gallery_html(items: Sequence[GalleryItem]) -> str:
    """One row per image: its caption and picture, then every method's joint map side by side
    (with the method's crop box), then the methods' own maps."""
    parts = []
    for item in items:
        cells = [f"<div class=caption><b>{html.escape(item.image_id)}</b><br>"
                 + "<br>".join(html.escape(c) for c in item.caption) + "</div>",
                 _figure(data_uri(item.picture), "original", f"{item.image_id} original")]
        small, _ = thumbnail(item.picture, MAP_SIDE)
        scale = small.shape[1] / item.picture.shape[1]
        own = []
        for method, mm in item.methods.items():
            box = None if mm.box is None else tuple(v * scale for v in mm.box)
            for name, values in mm.maps.items():
                title = mm.titles.get(name) or (method if name == "joint" else
                                                f"{method} · {name}")
                figure = _figure(data_uri(draw_box(overlay(small, values), box)
                                          if name == "joint" else overlay(small, values)),
                                 title, f"{item.image_id} {method} {name}")
                (cells if name == "joint" else own).append(figure)
        graphs = [_figure(graph_chart(item.picture, root, f"{method} root {k}"),
                          f"{method} root {k}", f"{item.image_id} {method} root {k}")
                  for method, roots in item.graphs.items()
                  for k, root in enumerate(roots, start=1)]
        parts.append("<div class=row>" + "".join(cells) + "</div>"
                     + (f"<div class='row own'>{''.join(own)}</div>" if own else "")
                     + (f"<div class='row graphs'>{''.join(graphs)}</div>" if graphs else ""))
    return "<div class=gallery>" + "".join(parts) + "</div>" if parts else "<p>no images</p>"


def concepts_html(items: Sequence[ConceptItem]) -> str:
    """Per class, a row of its concepts: each one's example image with the concept's map, and
    its mean contribution and share."""
    rows: dict[str, list[ConceptItem]] = {}
    for item in items:
        rows.setdefault(item.class_name, []).append(item)
    out = []
    for class_name, members in rows.items():
        figures = "".join(_figure(
            data_uri(m.picture), f"{m.method} c{m.concept}: {m.mean_contribution:+.2f} "
            f"({m.share:.0%}, {m.images} images) · e.g. {m.image_id}",
            f"{class_name} {m.method} concept {m.concept}") for m in members)
        out.append(f"<h3>{html.escape(class_name)}</h3><div class=row>{figures}</div>")
    return "<div class=concepts>" + "".join(out) + "</div>"


def paste(picture: np.ndarray, box: Sequence[float], saliency: np.ndarray) -> np.ndarray:
    """The picture with ``saliency`` drawn as a heat map inside ``box`` (x0, y0, x1, y1)."""
    h, w = picture.shape[:2]
    x0, y0 = max(0, int(box[0])), max(0, int(box[1]))
    x1, y1 = min(w, max(x0 + 1, round(box[2]))), min(h, max(y0 + 1, round(box[3])))
    out = picture.copy()
    out[y0:y1, x0:x1] = overlay(picture[y0:y1, x0:x1], saliency)
    return draw_box(out, (x0, y0, x1, y1))


def frames_html(items: Sequence[FrameItem]) -> str:
    """Each frame with its detections' masks pasted where the crops came from."""
    parts = []
    for item in items:
        picture = item.picture
        for box, saliency, _ in item.detections:
            picture = paste(picture, box, saliency)
        captions = "; ".join(c for _, _, c in item.detections)
        parts.append(_figure(data_uri(picture), f"{item.path}: {captions}",
                             f"{item.path} with its detections"))
    return "<div class=frames>" + "".join(parts) + "</div>" if parts else ""


def flips_html(items: Sequence[FlipItem], limit_note: str = "") -> str:
    if not items:
        return "<p>No image changed its label.</p>"
    groups: dict[tuple[str, str, str], list[FlipItem]] = {}
    for item in items:
        groups.setdefault((item.method, item.variant, item.direction), []).append(item)
    out = []
    for (method, variant, direction), members in groups.items():
        figs = "".join(
            _figure(data_uri(draw_box(m.picture, m.box)), " · ".join([m.image_id, *m.caption]),
                    f"{m.image_id} {direction}") for m in members)
        out.append(f"<h3>{html.escape(method)} / {html.escape(variant)}: "
                   f"{html.escape(direction)} ({len(members)} shown)</h3>"
                   f"<div class=flips>{figs}</div>")
    return (f"<p class=meta>{html.escape(limit_note)}</p>" if limit_note else "") + "".join(out)


def headline(summary: pd.DataFrame) -> str:
    """Images, labels, the full image's top-1 and the re-classification worth quoting: the one
    with the largest top-1 gain whose paired CI lies above zero. Without such a variant the
    headline says so and names the best top-1 instead, so that no noise is sold as a gain."""
    run = summary[(summary["section"] == "run") & (summary["group_by"] == "overall")
                  ].set_index("statistic")["value"]
    images, labelled = int(run.get("images", 0)), int(run.get("labelled", 0))
    text = f"{images} images, {labelled} with a label in the model's classes."
    overall = summary[summary["group_by"] == "overall"]
    acc = overall[(overall["section"] == "accuracy") & (overall["statistic"] == "top1")]
    base, others = acc[acc["method"] == "none"], acc[acc["method"] != "none"]
    if base.empty or others.empty:
        return text
    text += f" Top-1 accuracy of the full image: {_ci(base.iloc[0])}"
    gains = overall[(overall["section"] == "accuracy_gain") & (overall["statistic"] == "top1_gain")]
    sure = gains[gains["ci_low"] > 0].sort_values("value", ascending=False)
    if not sure.empty:
        gain = sure.iloc[0]
        best = others[(others["method"] == gain["method"]) & (others["variant"] == gain["variant"])]
        return (text + f"; re-classification {html.escape(gain['method'])} / "
                f"{html.escape(gain['variant'])}: {_ci(best.iloc[0])}, gain {_ci(gain)} "
                "(paired bootstrap, CI above zero).")
    best = others.sort_values("value", ascending=False).iloc[0]
    return (text + f"; no re-classification gains with a CI above zero (best top-1: "
            f"{html.escape(best['method'])} / {html.escape(best['variant'])}, {_ci(best)}).")


def render_report(summary: pd.DataFrame, curves: dict[str, Curves],
                  gallery: Sequence[GalleryItem], flips: Sequence[FlipItem],
                  title: str = "fidoflow run report", meta: dict[str, str] | None = None,
                  flips_note: str = "", frames: Sequence[FrameItem] = (),
                  concepts: Sequence[ConceptItem] = (), removed: int = 0) -> str:
    """The whole report as one HTML string (``removed``: images of the folder the archive no
    longer lists, left out)."""
    meta_html = "".join(f"<div><b>{html.escape(k)}</b>: {html.escape(str(v))}</div>"
                        for k, v in (meta or {}).items())
    chart = accuracy_chart(summary)
    curve_chart = curves_chart(curves)
    per_class = accuracy_table(summary, "class")
    per_split = accuracy_table(summary, "split")
    sections = [
        f"<h1>{html.escape(title)}</h1><div class=meta>{meta_html}</div>",
        f"<p class=headline>{headline(summary)}</p>", increment_html(summary, removed),
        ("<h2>Methods side by side: mask quality (means, 95 % CI) and cost</h2><p class=meta>"
         "Deletion/insertion: the target's probability as the most salient pixels are removed/"
         "restored; seconds: explain-stage compute time per image.</p>"),
        metric_table(summary) or "<p>none</p>",
        "<h2>Accuracy per variant</h2>",
        (f"<img src='{chart}' alt='accuracy per variant'>" if chart else
         "<p>No image carries a label in the model's classes: accuracies need labels. "
         "The share of images whose top-1 changed is in the next table.</p>"),
        accuracy_table(summary),
        "<h2>Against the baseline (same images, paired)</h2>", gain_table(summary),
    ]
    if per_split:
        sections += ["<h2>Accuracy per split</h2>", per_split]
    if per_class:
        sections += ["<details><summary>Accuracy per class</summary>", per_class, "</details>"]
    parts = part_table(summary)
    if parts:
        sections += [("<h2>Parts: where each method's map lies, per class</h2><p class=meta>The "
                     "mean share of the map's mass within each visible part's disc (radius 0.1 × "
                     "the bird's box), over the class's images; darker is more.</p>"), parts]
    sections += [
        "<h2>Deletion and insertion</h2>",
        (f"<img src='{curve_chart}' alt='deletion and insertion curves'>" if curve_chart
         else "<p>no curves</p>"),
        ("<h2>Gallery</h2><p class=meta>Every method's map of the same picture side by side "
         "(each heat map scaled to its own 99th percentile: blue cold, red hot), then the methods' own "
         "maps; the green box is the crop the re-classification classified. A structured "
         "attention graph (sag) shows each root, a smallest set of patches that alone (the rest "
         "blurred) keeps the class at 90 % of its probability, and beside it the root with one "
         "patch (red) removed: the probability left and how much it dropped.</p>"),
        gallery_html(gallery),
    ]
    if concepts:
        sections += [("<h2>Concepts: what each class's decision rests on</h2><p class=meta>Per "
                     "class and concept method, each concept's mean contribution to the class's "
                     "logit over the images explained as that class, its share of their summed "
                     "positive contributions, and the image where it counts most, with the "
                     "concept's map (the gallery shows every image's concepts).</p>"),
                     concepts_html(concepts)]
    if frames:
        sections += [("<h2>Detections back in their frames</h2><p class=meta>Each detection was "
                     "explained on its square crop; here its map is pasted where the crop came "
                     "from (the frame's detections together).</p>"), frames_html(frames)]
    sections += [
        "<h2>Images whose label changed</h2>", flips_html(flips, flips_note),
        "<h2>Errors</h2>", simple_table(summary, "errors"),
        "<h2>Timings (compute seconds)</h2>", simple_table(summary, "timing"),
    ]
    body = "\n".join(sections)
    return (f"<!DOCTYPE html><html lang=en><head><meta charset='utf-8'>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body data-loaded='pending'>{body}<script>{LOADED_SCRIPT}</script></body></html>")
