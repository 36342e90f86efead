"""``fidoflow demo``'s closing table: per image and method the target, the method's own numbers,
whether a FIDO mask failed, and what the re-classification answered."""

from __future__ import annotations


def print_demo_table(root: str) -> None:
    """Per image and method: the target class and its probability, the method's own per-image
    numbers (e.g. FIDO's p_ssr, p_sdr), whether a FIDO mask failed (its SSR blend keeps less
    than half the target's probability), and what the mask-guided re-classification answers
    (crop, crop+global; "=" when unchanged)."""
    from rich.console import Console
    from rich.table import Table

    from fidoflow.pipeline.methods.fido import mask_verdict
    from fidoflow.storage import parts, tables
    from fidoflow.storage.runfolder import RunFolder

    run = RunFolder(root)
    predictions = parts.read_parts(run, tables.PREDICTIONS).to_pylist()
    reclassified = {(r["image_id"], r["method"], r["variant"]): r
                    for r in parts.read_parts(run, tables.RECLASSIFY).to_pylist()}
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
