"""Train a digits CNN and report how many of its filters died: the bundled demo model comes from here.

Implicit filter sparsity (Mehta et al., CVPR 2019): with BatchNorm + ReLU, Adam and coupled L2 (the
`weight_decay` of `torch.optim.Adam`, not AdamW) drive many BN scales to ~0, so those filters output
a constant. SGD with the same L2 does much less of that. Run both and compare:

    python examples/train_digits.py --optimizer adam --epochs 200 --out deploysparse/assets/digits_vgg.pt
    python examples/train_digits.py --optimizer sgd --lr 0.02 --epochs 200 --out /tmp/digits_vgg_sgd.pt

`--arch mobilenet` trains a MobileNetV2-style net instead (depthwise convs, ReLU6,
`deploysparse.zoo.digits:build_digits_mobilenet`), to measure whether filters die the same way there.

The run is seeded (data order, initialisation) and uses two threads; the checkpoint is the float32
state_dict after the last epoch, written atomically.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from deploysparse.atomic import atomic_path, write_text
from deploysparse.zoo.digits import build_digits_mobilenet, build_digits_vgg, load_digits_data

ARCHS = {"vgg": build_digits_vgg, "mobilenet": build_digits_mobilenet}

THRESHOLDS = (1e-2, 1e-3, 1e-4)


def bn_sparsity(model: nn.Module) -> list[dict]:
    """Per BatchNorm layer: channel count and how many have |gamma| below each threshold."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            gamma = module.weight.detach().abs()
            row = {"layer": name, "channels": gamma.numel()}
            row.update({f"<{t:g}": int((gamma < t).sum()) for t in THRESHOLDS})
            rows.append(row)
    return rows


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predictions = model(images).argmax(dim=1)
    return float((predictions == labels).float().mean())


def make_optimizer(name: str, params, lr: float, l2: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=l2)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=l2)


def train(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_train, y_train = (torch.from_numpy(a) for a in load_digits_data("train"))
    x_val, y_val = (torch.from_numpy(a) for a in load_digits_data("val"))
    x_test, y_test = (torch.from_numpy(a) for a in load_digits_data("test"))

    model = ARCHS[args.arch]()
    optimizer = make_optimizer(args.optimizer, model.parameters(), args.lr, args.l2)
    loss_fn = nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        total_loss = 0.0
        for batch in torch.randperm(len(x_train), generator=order_rng).split(args.batch):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
        if epoch == 1 or epoch % args.log_every == 0 or epoch == args.epochs:
            dead = sum(row["<0.001"] for row in bn_sparsity(model))
            print(
                f"epoch {epoch:4d}  loss {total_loss / len(x_train):.4f}  "
                f"val {accuracy(model, x_val, y_val):.4f}  |gamma|<1e-3: {dead}  "
                f"{time.perf_counter() - start:.0f}s",
                flush=True,
            )
    seconds = time.perf_counter() - start

    state = {
        k: v.detach().to(torch.float32).clone() if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }
    with atomic_path(args.out, suffix=".pt") as tmp:
        torch.save(state, tmp)
    summary = {
        "arch": args.arch,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "l2": args.l2,
        "batch": args.batch,
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": round(seconds, 1),
        "val_accuracy": accuracy(model, x_val, y_val),
        "test_accuracy": accuracy(model, x_test, y_test),
        "bn": bn_sparsity(model),
        "checkpoint": str(args.out),
        "checkpoint_bytes": Path(args.out).stat().st_size,
    }
    if args.summary:
        write_text(args.summary, json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict) -> None:
    print(
        f"\n{summary['optimizer']}: {summary['epochs']} epochs in {summary['train_seconds']:.0f}s, "
        f"val {summary['val_accuracy']:.4f}, test {summary['test_accuracy']:.4f}"
    )
    header = "layer".ljust(12) + "channels" + "".join(f"{'<' + format(t, 'g'):>10}" for t in THRESHOLDS)
    print(header)
    totals = np.zeros(len(THRESHOLDS) + 1, dtype=np.int64)
    for row in summary["bn"]:
        counts = [row[f"<{t:g}"] for t in THRESHOLDS]
        totals += [row["channels"], *counts]
        cells = "".join(f"{c / row['channels']:>10.1%}" for c in counts)
        print(f"{row['layer']:<12}{row['channels']:>8}{cells}")
    print(f"{'total':<12}{totals[0]:>8}" + "".join(f"{c / totals[0]:>10.1%}" for c in totals[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="vgg")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--l2", type=float, default=5e-4, help="coupled L2 (optimizer weight_decay)")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 for adam, 0.02 for sgd")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True, help="where to write the state_dict (.pt)")
    parser.add_argument("--summary", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if args.lr is None:
        args.lr = 1e-3 if args.optimizer == "adam" else 0.02
    print_summary(train(args))


if __name__ == "__main__":
    main()
