"""`deploysparse advise-depth --data images.npy [--model M]`: how deep a CNN for this data needs to be
(EBCLE), and which residual blocks of a model measure as near-identity beyond that depth."""

from __future__ import annotations

import click
import numpy as np

from deploysparse.cli.options import FINITE_NON_NEGATIVE, count_option, echo_json
from deploysparse.errors import CalibrationError, UsageError


@click.command("advise-depth")
@click.option("--data", required=True, help="Images as .npy: (N, H, W), (N, C, H, W) or (N, H, W, C).")
@click.option("--model", "model_path", help="An .onnx model whose residual blocks to measure on the data.")
@click.option(
    "--identity-threshold",
    type=FINITE_NON_NEGATIVE,
    default=0.1,
    show_default=True,
    help="A block is near-identity when ||F(x)|| / ||x|| is at most this.",
)
@count_option("--samples", default=64, help_text="Images used to measure the blocks.")
@click.option("--drop-blocks", "drop_out", help="Write the model with the candidate blocks bypassed here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def command(
    data: str,
    model_path: str | None,
    identity_threshold: float,
    samples: int,
    drop_out: str | None,
    as_json: bool,
) -> None:
    """Entropy of the data, the conv depth it can use, and residual blocks past it that do nothing."""
    from deploysparse import depth_advisor

    if drop_out and not model_path:
        raise UsageError("--drop-blocks needs --model")
    if drop_out:
        from deploysparse.output_guard import reads, refuse_overlap, writes

        refuse_overlap(
            writes("--drop-blocks", drop_out, "model"),
            [*reads("--model", model_path, "model"), *reads("--data", data)],
        )
    images = _load(data)
    bound = depth_advisor.depth_bound(images)
    report: dict = {"data": data, **bound.to_json(), "blocks": [], "candidates": []}
    if model_path:
        report.update(
            _advise_model(model_path, images, bound.depth_bound, identity_threshold, samples, drop_out)
        )
    if as_json:
        echo_json(report)
        return
    click.echo(
        f"entropy {report['entropy_bits']:.3f} bits/pixel; dependency range {report['dependency_range']} px"
    )
    click.echo(f"useful conv depth bound: {report['depth_bound']} layers (3x3, stride 1)")
    for b in report["blocks"]:
        mark = "  candidate" if b["add"] in report["candidates"] else ""
        click.echo(
            f"  block {b['add']}: conv depth {b['conv_depth']}, ||F(x)||/||x|| {b['residual_ratio']:.4f}, "
            f"output change when bypassed {b['output_change']:.4f}{mark}"
        )
    if model_path and not report["blocks"]:
        click.echo("  no identity-shortcut residual blocks found")
    if drop_out:
        click.echo(f"wrote {drop_out} ({len(report['candidates'])} blocks bypassed)")


def _load(path: str) -> np.ndarray:
    try:
        images = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise CalibrationError(f"{path}: no such file") from exc
    except (ValueError, OSError) as exc:
        raise CalibrationError(f"{path}: not a .npy array ({exc})") from exc
    if not isinstance(images, np.ndarray):
        raise CalibrationError(f"{path}: an .npz archive; give one .npy array of images")
    if images.ndim not in (3, 4) or images.shape[0] == 0 or images.dtype.kind not in "iuf":
        raise CalibrationError(
            f"{path}: expected images as a numeric (N, H, W), (N, C, H, W) or (N, H, W, C) array, got "
            f"{images.dtype} {images.shape}"
        )
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise CalibrationError(f"{path}: holds NaN or Inf values; clean the data first")
    return images


def _advise_model(
    model_path: str, images: np.ndarray, bound: int, threshold: float, samples: int, drop_out: str | None
) -> dict:
    from deploysparse import depth_advisor
    from deploysparse.calibration import load_calibration
    from deploysparse.modelio import load_model, save_model

    model = load_model(model_path)
    if len(model.graph.input) != 1:
        raise UsageError(f"{model_path}: advise-depth feeds the images to a single-input model")
    picked = images[np.linspace(0, len(images) - 1, min(samples, len(images))).astype(np.int64)]
    feeds = load_calibration({model.graph.input[0].name: picked.astype(np.float32)}, model)
    blocks = depth_advisor.find_residual_blocks(model)
    depth_advisor.measure_blocks(model, feeds, blocks)
    chosen = depth_advisor.candidates(blocks, bound, threshold)
    result = {
        "model": model_path,
        "blocks": [b.to_json() for b in blocks],
        "candidates": [b.add for b in chosen],
        "plan_step": {"op": "drop_blocks", "blocks": [b.add for b in chosen]},
    }
    if drop_out:
        dropped = depth_advisor.drop_blocks(model, [b.add for b in chosen])
        save_model(dropped, drop_out)
        result["dropped_model"] = drop_out
    return result
