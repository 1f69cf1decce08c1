"""How many planted dead channels the dead-filter pass removes where they hide, and whether it is exact.

The architectures are the test suite's hiding places (tests/archs/hiding.py): inverted residuals,
an Inception concat with a padded count-including AvgPool, a VoVNet OSA with padded depthwise convs,
a Res2Net split, YOLO's C2f chunk and SPPF, and two cases with non-zero constants that meet zero
padding (which must stay). Each is exported four ways (dynamo / legacy, BN kept / folded).

    python benchmarks/dead_reach.py

Prints one row per architecture and export: dead identities planted, removed, the largest relative
output difference of compact against original on 3 fresh random inputs, and seconds of `api.prune`
(analysis + dead check + surgery; the export is not timed).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploysparse import api
from tests.archs.hiding import ARCHS
from tests.exporting import export, random_feeds, relative_error, run

EXPORTS = [("dynamo", False), ("dynamo", True), ("legacy", False), ("legacy", True)]


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="dead-reach-"))
    print("| architecture | export | dead identities | removed | max rel. error | seconds |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    totals = [0, 0]
    for name, arch in ARCHS.items():
        for exporter, keep_bn in EXPORTS:
            path = root / f"{name}-{exporter}-{keep_bn}.onnx"
            export(arch.planted(), arch.example(), path, exporter, keep_bn)
            start = time.perf_counter()
            result = api.prune(str(path), criterion="dead")
            seconds = time.perf_counter() - start
            feeds = random_feeds(path, np.random.default_rng(arch.seed), batch=3)
            err = max(
                relative_error(a, b) for a, b in zip(run(path, feeds), run(result.model, feeds), strict=True)
            )
            removed = result.summary["channels_removed"]
            totals[0] += arch.removed
            totals[1] += removed
            export_name = f"{exporter}, BN {'kept' if keep_bn else 'folded'}"
            print(
                f"| {name} | {export_name} | {arch.removed} | {removed} | {err:.1e} | {seconds:.2f} |",
                flush=True,
            )
    print(f"\ntotal: {totals[1]} of {totals[0]} dead identities removed")


if __name__ == "__main__":
    main()
