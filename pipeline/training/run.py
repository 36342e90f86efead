"""``fidoflow train`` as a plain function: archive -> decoded tensors -> fit -> model folder.
No Prefect inside; flows/train.py wraps it in the ``train-classifier`` flow, a notebook can
call it as it is."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from fidoflow.pipeline.archive.readers import archive_root, read_archive
from fidoflow.pipeline.imaging.decode import DecodeLimits
from fidoflow.pipeline.models.class_maps import build_network, input_size
from fidoflow.pipeline.models.device import resolve_device
from fidoflow.pipeline.provenance import code_version
from fidoflow.pipeline.training.data import load_frame
from fidoflow.pipeline.training.job import TrainJob, model_card
from fidoflow.pipeline.training.loop import check_resume, evaluate, fit
from fidoflow.storage.modelfolder import CARD, WEIGHTS, ModelFolder


def train_model(job: TrainJob, report: Callable[[dict], None] | None = None) -> dict:
    """Train (or resume) into ``job.out``; returns the summary written to training.json."""
    config = job.config
    folder = ModelFolder(job.out)
    resume = folder.read_checkpoint()
    if resume is not None and resume["config"] != config.as_dict():
        raise ValueError(f"{job.out} holds a training with other settings; use another --out "
                         "or the same options")
    device = resolve_device(job.device)
    frame = read_archive(job.archive, job.format, "all", job.images_root)
    data = load_frame(frame, archive_root(job.archive, job.images_root), input_size(config.backbone),
                      config.val_fraction, limits=DecodeLimits(), threads=job.decode_threads)
    if resume is not None:
        check_resume(resume, config, data.class_names)
    card = model_card(config, data.class_names)

    def save(checkpoint: dict, improved: bool) -> None:
        if improved:
            folder.write_model(checkpoint["best"]["model"], card)
        folder.write_metrics(checkpoint["history"])
        folder.write_checkpoint(checkpoint)

    result = fit(config, data, device, save, resume, report)
    test_accuracy = None
    if data.test is not None:
        net = build_network(config.backbone, len(data.class_names)).to(device)
        net.load_state_dict(result.best_state)
        test_accuracy = evaluate(net, data.test, device)[1]
    best = result.history[result.best_epoch - 1]
    summary = {
        "config": config.as_dict(), "archive": job.archive, "device": str(device),
        "classes": len(data.class_names), "images": {
            "train": len(data.train), "val": len(data.val),
            "test": len(data.test) if data.test is not None else 0, "skipped": data.skipped},
        "epochs": len(result.history), "best_epoch": result.best_epoch,
        "val_accuracy": best["val_accuracy"], "test_accuracy": test_accuracy,
        "model": folder.path(WEIGHTS), "card": folder.path(CARD),
        "code_version": code_version(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    folder.write_summary(summary)
    return summary
