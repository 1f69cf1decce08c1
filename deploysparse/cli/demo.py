"""`deploysparse demo`: the x86 CPU recipe end to end on the bundled digits model.

Dead filters removed (the bundled net was trained with Adam + L2, so many have a BN scale near 0),
then a ranking criterion down to 50% of the FLOPs, an ONNX Runtime build, validation against the
original on held-out digits (with accuracy), a benchmark and report.html.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import numpy as np

from deploysparse.cli.options import CriterionChoice

DEMO_CRITERION = "l1"


@click.command("demo")
@click.option("-o", "--outdir", default="demo-out", show_default=True, help="Output folder.")
@click.option(
    "--criterion",
    type=CriterionChoice(),
    default=DEMO_CRITERION,
    show_default=True,
    help="Ranking criterion after 'dead'.",
)
@click.option(
    "--flops-target",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Fraction of the FLOPs to keep.",
)
def command(outdir: str, criterion: str, flops_target: float) -> None:
    """Prune the bundled digits CNN on ONNX Runtime (CPU) and write a report to OUTDIR."""
    from deploysparse.cli.run import print_summary
    from deploysparse.cli.signals import sigterm_raises
    from deploysparse.zoo.digits import calibration_set, validation_set

    # Stopped (Ctrl-C, SIGTERM): the data and the run's staging folder are removed, as on success.
    with sigterm_raises(), tempfile.TemporaryDirectory(prefix="deploysparse-demo-") as tmp:
        data_dir = Path(tmp)
        np.save(data_dir / "calib.npy", calibration_set())
        x_val, y_val = validation_set()
        np.save(data_dir / "val.npy", x_val)
        np.save(data_dir / "val_labels.npy", y_val)
        report = _run_demo(data_dir, Path(outdir), criterion, flops_target)
    print_summary(report, outdir)
    if not report["validation"]["passed"]:
        raise SystemExit(1)


def _run_demo(data_dir: Path, out: Path, criterion: str, flops_target: float) -> dict:
    """The demo recipe on the digits data in `data_dir`; the data is published into OUTDIR/data."""
    from deploysparse.pipeline import RunInputs, run_recipe
    from deploysparse.recipe import load_recipe

    base = load_recipe("x86-cpu-onnxruntime")
    recipe = base.model_copy(
        update={
            "name": "demo (x86-cpu-onnxruntime, 50% FLOPs)",
            "prune": base.prune.model_copy(
                update={
                    "criterion": ["dead", criterion],
                    "flops_target": flops_target,
                    "max_layer_ratio": 0.9,
                }
            ),
            # Removing live filters changes the outputs: judge by accuracy and agreement, not bits.
            "validate_": base.validate_.model_copy(
                update={
                    "atol": None,
                    "rtol": None,
                    "min_cosine": None,
                    "min_top1_agreement": 0.9,
                    "max_accuracy_drop": 0.03,
                }
            ),
            "bench": base.bench.model_copy(update={"repeats": 3, "iters": 50}),
        }
    )
    data_files = ("calib.npy", "val.npy", "val_labels.npy")
    return run_recipe(
        recipe,
        RunInputs(
            model="deploysparse.zoo.digits:digits_model",
            calib=str(data_dir / "calib.npy"),
            data=str(data_dir / "val.npy"),
            labels=str(data_dir / "val_labels.npy"),
            input_shapes={"": (1, 1, 16, 16)},
        ),
        out,
        extra_files={f"data/{name}": data_dir / name for name in data_files},
    )
