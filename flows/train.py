"""The ``train-classifier`` flow: train a class-map classifier on an archive (pipeline/training/run.py)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from fidoflow.pipeline.settings import TrainSettings
from fidoflow.pipeline.training.progress import TrainingBar, epoch_line
from fidoflow.pipeline.training.run import train_model

DEFAULT_SETTINGS = TrainSettings()


@flow(name="train-classifier", log_prints=False)
def train_classifier(archive: str, out: str, settings: TrainSettings = DEFAULT_SETTINGS,
                     progress: bool = False) -> dict:
    """Train into ``out`` (resuming its last checkpoint). ``settings`` are the training's
    options (fidoflow/pipeline/settings.py; the CLI's ``--options`` by the same names);
    ``progress`` draws a bar on the terminal."""
    job = settings.to_job(archive, out)
    logger = get_run_logger()

    def log_epochs(event: dict) -> None:
        if event["event"] == "epoch":
            logger.info(epoch_line(event))

    if not progress:
        return train_model(job, log_epochs)
    with TrainingBar() as bar:
        return train_model(job, lambda event: (bar(event), log_epochs(event)))
