"""The ``learn-concepts`` flow: features in one pass, one task per class's XNN and NMF bank,
then the card (pipeline/concepts/job.py does the work; this is wiring)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from fidoflow.pipeline.concepts import job as steps
from fidoflow.pipeline.settings import ConceptSettings

DEFAULT_SETTINGS = ConceptSettings()


@task(name="extract features")
def extract_features(job: steps.ConceptJob) -> dict:
    return steps.extract_features(job)


@task(name="train class concepts", task_run_name="class {index}")
def train_class(job: steps.ConceptJob, index: int) -> dict:
    return steps.train_class(job, index)


@flow(name="learn-concepts", log_prints=False)
def learn_concepts(archive: str, out: str, settings: ConceptSettings = DEFAULT_SETTINGS) -> dict:
    """Learn each class's concepts of ``settings.model`` on ``archive`` into ``out`` (a rerun
    keeps the classes already trained with the same settings). ``settings`` are the options of
    fidoflow/pipeline/settings.py (the CLI's ``--options`` by the same names)."""
    job = settings.to_job(archive, out)
    logger = get_run_logger()
    extracted = extract_features(job)
    logger.info("features of %d images at the %s (%d channels)", extracted["images"],
                f"{extracted['layer']['side']} of {extracted['layer']['name']}",
                extracted["channels"])
    classes = steps.classes_to_train(job)
    futures = {i: train_class.submit(job, i) for i in classes}
    entries = {i: future.result() for i, future in futures.items()}
    for i, entry in entries.items():
        logger.info("class %d %s: %d concepts, R² %.3f", i, entry["class"], entry["concepts"],
                    entry["val_r2"])
    return steps.write_card(job, entries, extracted)
