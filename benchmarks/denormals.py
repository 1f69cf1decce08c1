"""What denormal weights cost on this CPU: the bundled digits model as it is vs flushed, side by side.

    PYTHONPATH=. python benchmarks/denormals.py [--batches 1,8] [--rounds 10] [--iters 20] [--threads N]

The bundled digits VGG (trained with Adam + L2) is exported as `deploysparse demo` exports it (BN kept;
ONNX Runtime folds it). Printed: its denormal weights per tensor; then, per batch size, the whole
model's median latency as it is and with its denormal weights set to zero
(`backends.denormal_cost.measure_cost`: two ONNX Runtime sessions, runs interleaved round by round)
and the per-layer profile of both
(`Backend.profile`, runs interleaved), so a slow conv shows by name. The runs are
interleaved because the machine may be shared: only the ratio measured side by side is meaningful.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx
import torch

from deploysparse.backends import get_backend
from deploysparse.backends.denormal_cost import measure_cost
from deploysparse.denormals import count_denormals, flushed_copy
from deploysparse.frontend.torch_export import export_onnx
from deploysparse.modelio import save_model
from deploysparse.profiling import side_by_side_rows
from deploysparse.zoo.digits import INPUT_SHAPE, digits_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: all cores)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    with tempfile.TemporaryDirectory(prefix="denormals-") as tmp:
        original_path = Path(tmp) / "digits.onnx"
        export_onnx(digits_model(), torch.randn(*INPUT_SHAPE), original_path)
        original = onnx.load(original_path)
        flushed, count = flushed_copy(original)
        flushed_path = save_model(flushed, Path(tmp) / "digits.flushed.onnx")
        print(f"bundled digits VGG: {count.describe(limit=6)}")
        print(f"after flushing: {count_denormals(flushed).total} left\n")
        print("| batch | as is p50 ms | flushed p50 ms | as is / flushed | runs each |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for batch in batches:
            cost = measure_cost(
                original,
                {"input": [batch, *INPUT_SHAPE[1:]]},
                rounds=args.rounds,
                iters=args.iters,
                threads=args.threads,
            )
            print(
                f"| {batch} | {cost.as_is_ms:.3f} | {cost.flushed_ms:.3f} | {cost.slowdown:.2f}x | {cost.runs} |"
            )
        for batch in batches:
            profiles = get_backend("onnxruntime").profile(
                {"as is": original_path, "flushed": flushed_path},
                batch=batch,
                warmup=5,
                runs=args.rounds * args.iters,
                threads=args.threads,
            )
            print(f"\nper layer, batch {batch} (median ms per run, {args.rounds * args.iters} runs each)")
            print("| node | op | as is | flushed | denormals in its weight |")
            print("| --- | --- | ---: | ---: | ---: |")
            for row in side_by_side_rows(profiles)[:8]:
                weight = _weight_of(original, row["node"])
                print(
                    f"| {row['node']} | {row['op']} | {row['ms'].get('as is', 0):.3f} | "
                    f"{row['ms'].get('flushed', 0):.3f} | {count.tensors.get(weight, 0):,} |"
                )
    return 0


def _weight_of(model: onnx.ModelProto, node_name: str) -> str:
    node = next((n for n in model.graph.node if n.name == node_name), None)
    return node.input[1] if node is not None and len(node.input) > 1 else ""


if __name__ == "__main__":
    sys.exit(main())
