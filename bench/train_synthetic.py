"""Train the small CNN of pipeline/models/synthetic_cnn.py on generated birds; prints test accuracy.

    .venv/bin/python bench/train_synthetic.py            # writes pipeline/data/synthetic_cnn.pt

Deterministic for a given seed and thread count. Train, validation and test sets come from
different seeds, so every accuracy printed is on scenes the network has never seen.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fidoflow.pipeline.archive.synthetic import make_dataset
from fidoflow.pipeline.models.synthetic_cnn import NUM_CLASSES, WEIGHTS, SyntheticCNN

OUT = Path(__file__).resolve().parents[1] / "pipeline" / "data" / WEIGHTS


def generate(n: int, seed: int, chunk: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 (4x less memory than float) and labels."""
    images, labels = [], []
    for start in range(0, n, chunk):
        part = make_dataset(min(chunk, n - start), seed + start, classes=NUM_CLASSES)
        images.append((part.images * 255).round().to(torch.uint8))
        labels.append(part.labels)
    return torch.cat(images), torch.cat(labels)


@torch.no_grad()
def accuracy(model: SyntheticCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    preds = torch.cat([model(images[i:i + 256].float() / 255).argmax(1)
                       for i in range(0, len(images), 256)])
    return (preds == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    start = time.perf_counter()
    # scene i of make_dataset(n, s) depends on (s, i): chunks use seeds far apart
    train_x, train_y = generate(args.train, 1_000_000 * (args.seed + 1))
    test_x, test_y = generate(args.test, 1_000_000 * (args.seed + 1) + 500_000)
    print(f"generated {len(train_x)} + {len(test_x)} scenes in {time.perf_counter() - start:.0f} s")

    model = SyntheticCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(train_x) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.2)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        total = 0.0
        for i in range(len(train_x) // args.batch):
            idx = order[i * args.batch:(i + 1) * args.batch]
            x = train_x[idx].float() / 255
            flip = torch.rand(len(x)) < 0.5  # birds face both ways: flipping keeps the label
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(f"epoch {epoch + 1}: loss {total / (i + 1):.3f}, "
              f"test acc {accuracy(model, test_x, test_y):.3f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    acc = accuracy(model, test_x, test_y)
    print(f"held-out test accuracy {acc:.4f} on {len(test_x)} scenes; "
          f"total {time.perf_counter() - start:.0f} s")
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
