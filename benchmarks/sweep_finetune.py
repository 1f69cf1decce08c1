"""What 0-3 epochs of fine-tuning recover inside a sweep, per criterion, on the bundled digits CNN.

    PYTHONPATH=. python benchmarks/sweep_finetune.py [--epochs 0,1,2,3] [--targets 0.3,0.1]
        [--criteria l1,l2,bn-scale,similarity] [--out /tmp/sweep-finetune]

One sweep per epoch count (0 = no `finetune` section), each over criteria x FLOPs targets, run
in-process with `deploysparse.sweep.run_sweep` exactly as `deploysparse sweep` runs it: prune ->
`apply_plan` -> `examples/finetune_digits.py:finetune` (Adam lr 1e-3, batch 32, seed 0, one thread,
the training split) -> re-export -> ONNX Runtime build -> validate on the test split (360 images:
one image = 0.28 points) -> a short benchmark (latency is not the point here). The table is the
compact model's test accuracy; the original's is on the first line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def sweep_file(folder: Path, epochs: int, criteria: list[str], targets: list[float]) -> Path:
    data = {
        "name": f"finetune-{epochs}",
        "models": [{"model": "deploysparse.zoo.digits:digits_model", "input_shape": [1, 1, 16, 16]}],
        "data": {
            "calib": "deploysparse.zoo.digits:calibration_set",
            "val": "examples.finetune_digits:held_out_set",
        },
        "recipe": {
            "prune": {"max_layer_ratio": 0.95},
            "validate": {"atol": None, "rtol": None, "min_cosine": None, "min_top1_agreement": None},
            "bench": {"warmup": 2, "iters": 10, "repeats": 1},
        },
        "axes": {"criterion": criteria, "flops_target": targets},
    }
    if epochs:
        data["finetune"] = {"function": "examples.finetune_digits:finetune", "args": {"epochs": epochs}}
    path = folder / f"finetune-{epochs}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="0,1,2,3")
    parser.add_argument("--targets", default="0.3,0.1")
    parser.add_argument("--criteria", default="l1,l2,bn-scale,similarity")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sweep-finetune"))
    args = parser.parse_args()
    from deploysparse.sweep import load_sweep, run_sweep

    epochs = [int(e) for e in args.epochs.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    criteria = args.criteria.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    table: dict[tuple[str, float], dict[int, float]] = {}
    original = None
    seconds: dict[int, float] = {}
    for count in epochs:
        start = time.perf_counter()
        outcome = run_sweep(
            load_sweep(sweep_file(args.out, count, criteria, targets)), args.out / f"epochs-{count}"
        )
        seconds[count] = time.perf_counter() - start
        for row in outcome.rows:
            if row["status"] != "ok":
                raise SystemExit(f"point failed: {row['error']}")
            table.setdefault((row["criterion"], row["flops_target"]), {})[count] = row["accuracy"]
            original = row["accuracy_original"]
    header = "| criterion | FLOPs target | " + " | ".join(f"{e} epochs" for e in epochs) + " |"
    print(f"original (test split): {original:.2%}\n")
    print(header)
    print("| --- | --- | " + " | ".join("---" for _ in epochs) + " |")
    for (criterion, target), accs in table.items():
        print(f"| {criterion} | {target} | " + " | ".join(f"{accs[e]:.2%}" for e in epochs) + " |")
    print("\nsweep seconds per epoch count: " + json.dumps({str(k): round(v, 1) for k, v in seconds.items()}))


if __name__ == "__main__":
    main()
