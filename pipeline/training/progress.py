"""A rich progress bar for the training loop's events (loss and accuracy as they run)."""

from __future__ import annotations

from typing import Self

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingBar:
    """Use as ``with TrainingBar() as bar: fit(..., report=bar)``; one bar per epoch, and one
    printed line per finished epoch with its validation figures."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.3f}"),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        self.task = None
        self.epochs = 0

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.epochs = event["epochs"]
            if event["start_epoch"]:
                self.progress.console.print(f"resuming after epoch {event['start_epoch']}")
        elif kind == "step":
            if self.task is None:
                self.task = self.progress.add_task(f"epoch {event['epoch']}/{self.epochs}",
                                                   total=event["steps"], loss=0.0, acc=0.0)
            self.progress.update(self.task, completed=event["step"], loss=event["loss"],
                                 acc=event["accuracy"])
        elif kind == "epoch":
            if self.task is not None:
                self.progress.remove_task(self.task)
                self.task = None
            self.progress.console.print(epoch_line(event))


def epoch_line(row: dict) -> str:
    """One epoch's figures as one line (the bar prints it, the flow logs it)."""
    return (f"epoch {row['epoch']}: train loss {row['train_loss']:.3f} acc "
            f"{row['train_accuracy']:.3f} | val loss {row['val_loss']:.3f} acc "
            f"{row['val_accuracy']:.3f}{' (best)' if row['best'] else ''} | "
            f"{row['seconds']:.0f} s")
