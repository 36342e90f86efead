"""The training loop: epochs of augmented mini-batches, validation after each, a checkpoint
handed to the caller after each (model, optimiser, scheduler, random states, history, best),
and resumption from such a checkpoint that repeats exactly what an uninterrupted run does
(same seed and thread count on a CPU).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fidoflow.pipeline.models.class_maps import BACKBONES, ClassMapNet, build_network

from .data import ImageTensors, TrainData, augment
from .diversify import DiversifyConfig, block_of
from .loss import LOSSES, default_top_k, training_loss


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (the device only decides where)."""

    backbone: str = "efficientnet-lite0"
    pretrained: bool = True  # ImageNet weights for efficientnet-lite0
    loss: str = "gce"
    top_k: int | None = None  # None: 15, or every negative when there are fewer classes
    diversify: DiversifyConfig | None = field(default_factory=DiversifyConfig)
    epochs: int = 10
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 32
    crop_scale: float = 0.75  # random crops keep 75-100 % of the side; 1 disables cropping
    flip: bool = True
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; expected one of "
                             f"{', '.join(BACKBONES)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top-k must be at least 1, got {self.top_k}")
        if not 0 < self.crop_scale <= 1 or not 0 < self.val_fraction < 1 or self.lr <= 0:
            raise ValueError("crop scale must be in (0, 1], validation fraction in (0, 1) and "
                             "lr positive")

    def as_dict(self) -> dict:
        return asdict(self)

    def k(self, num_classes: int) -> int:
        return self.top_k or default_top_k(num_classes)


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_state: dict[str, torch.Tensor]


def evaluate(net: nn.Module, data: ImageTensors, device: torch.device,
             batch_size: int = 64) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``net`` in eval mode on ``data``."""
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad(), _autocast(device):
        for i in range(0, len(data), batch_size):
            x = data.images[i:i + batch_size].to(device).float() / 255
            y = data.labels[i:i + batch_size].to(device)
            logits = net(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    return loss / max(len(data), 1), correct / max(len(data), 1)


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on a GPU; full precision elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _rng_states(device: torch.device) -> dict:
    states = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _optimiser(net: ClassMapNet, config: TrainConfig, steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW at one learning rate for the backbone and the class maps, one cycle. A pretrained
    backbone at a tenth of the rate (the old recipe) barely moved: on the small-part task of
    bench/train.py Lite0 reached 0.44 in three epochs, 0.86 at one rate of 1e-3 and 0.99 at
    3e-3 (bench/RESULTS.md, "Training that learns")."""
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=steps, pct_start=0.2)
    return opt, sched


def check_resume(checkpoint: dict, config: TrainConfig, class_names: list[str]) -> None:
    """Refuse to continue a checkpoint made with other settings or classes."""
    if checkpoint["config"] != config.as_dict() or checkpoint["classes"] != class_names:
        raise ValueError("the output folder holds a training with other settings or classes; "
                         "use another --out or the same options")


def fit(config: TrainConfig, data: TrainData, device: torch.device,
        save: Callable[[dict, bool], None], resume: dict | None = None,
        report: Callable[[dict], None] | None = None) -> FitResult:
    """Train, validating after every epoch; ``save(checkpoint, improved)`` is called after each
    epoch (``improved``: the epoch is the best on validation so far, its weights are
    ``checkpoint["best"]["model"]``). ``resume`` is such a checkpoint to continue from."""
    report = report or (lambda event: None)
    k = len(data.class_names)
    torch.manual_seed(config.seed)
    net = build_network(config.backbone, k, block_of(config.diversify), config.pretrained).to(device)
    steps = max(1, len(data.train) // config.batch_size)
    opt, sched = _optimiser(net, config, config.epochs * steps)
    history: list[dict] = []
    best: dict = {"epoch": 0, "val_accuracy": -1.0, "val_loss": float("inf"), "model": None}
    start = 0
    if resume is not None:
        check_resume(resume, config, data.class_names)
        net.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        history, best, start = list(resume["history"]), resume["best"], resume["epoch"]
        _set_rng_states(resume["rng"], device)
    report({"event": "start", "epochs": config.epochs, "steps": steps, "start_epoch": start})
    for epoch in range(start + 1, config.epochs + 1):
        began = time.perf_counter()
        net.train()
        order = torch.randperm(len(data.train))
        total_loss, correct, seen = 0.0, 0, 0
        for step in range(steps):
            idx = order[step * config.batch_size:(step + 1) * config.batch_size]
            x = augment(data.train.images[idx], config.crop_scale, config.flip).to(device)
            y = data.train.labels[idx].to(device)
            with _autocast(device):
                logits = net(x).float()
            loss = training_loss(config.loss, logits, y, config.k(k))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            report({"event": "step", "epoch": epoch, "step": step + 1, "steps": steps,
                    "loss": total_loss / seen, "accuracy": correct / seen})
        val_loss, val_acc = evaluate(net, data.val, device)
        improved = val_acc > best["val_accuracy"] or (
            val_acc == best["val_accuracy"] and val_loss < best["val_loss"])
        if improved:
            best = {"epoch": epoch, "val_accuracy": val_acc, "val_loss": val_loss,
                    "model": {n: t.detach().cpu().clone() for n, t in net.state_dict().items()}}
        row = {"epoch": epoch, "train_loss": total_loss / seen, "train_accuracy": correct / seen,
               "val_loss": val_loss, "val_accuracy": val_acc, "lr": sched.get_last_lr()[-1],
               "best": improved, "seconds": time.perf_counter() - began}
        history.append(row)
        save({"config": config.as_dict(), "classes": list(data.class_names), "epoch": epoch,
              "model": net.state_dict(), "optimizer": opt.state_dict(),
              "scheduler": sched.state_dict(), "rng": _rng_states(device),
              "history": history, "best": best}, improved)
        report({"event": "epoch", **row})
    return FitResult(history, best["epoch"], best["model"])
