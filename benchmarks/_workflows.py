"""The two user workflows compared, each from a trained nn.Module to a compact ONNX file on disk.

Torch-Pruning prunes the module, then the user exports it with torch's default (dynamo) exporter, or
the TorchScript one with --tp-exporter legacy.
deploysparse exports first (keeping BatchNorm and parameter names), prunes the graph, then saves it;
`deploysparse.torch.apply_plan` replays the same removal on the module for fine-tuning (not timed: the
compact ONNX is already the deliverable).
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import output_layers, stage
from torch import nn

# Torch-Pruning has no FLOPs budget: its iterative schedule raises the per-layer ratio by
# TP_MAX_RATIO / TP_STEPS per step, and the workflow stops at the first step whose MACs (its own
# counter) are at or under the target. 40 steps of 2.25 % keep the overshoot near one step's worth.
TP_MAX_RATIO = 0.9
TP_STEPS = 40


@dataclass(frozen=True)
class Budget:
    """A channel ratio (fraction of channels removed) or a FLOPs target (fraction of MACs kept)."""

    name: str
    ratio: float | None = None
    flops_target: float | None = None


BUDGETS = (
    Budget("30% channels", ratio=0.3),
    Budget("50% channels", ratio=0.5),
    Budget("50% FLOPs", flops_target=0.5),
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The dynamo exporter prints progress lines and warnings; keep the tables readable."""
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        yield


def torch_pruning_workflow(
    model: nn.Module,
    example: torch.Tensor,
    budget: Budget,
    careful: bool,
    out: Path,
    exporter: str = "dynamo",
) -> tuple[nn.Module, Path]:
    """Torch-Pruning 1.6 with L1 magnitude importance; `careful` ignores the layers writing outputs.
    `exporter`: torch's default "dynamo", or "legacy" (TorchScript, what deploysparse's front end
    tries first), so the export cost can be compared like for like.

    With its defaults (no ignored_layers) Torch-Pruning also removes output channels of the final
    Linear / head conv, so the model answers with fewer classes: that is what `careful=False` shows.
    """
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    ignored = output_layers(pruned, example) if careful else None
    importance = tp.importance.MagnitudeImportance(p=1)
    with stage("prune"):
        if budget.ratio is not None:
            pruner = tp.pruner.BasePruner(
                pruned, example, importance=importance, pruning_ratio=budget.ratio, ignored_layers=ignored
            )
            pruner.step()
        else:
            base_macs, _ = tp.utils.count_ops_and_params(pruned, example)
            pruner = tp.pruner.BasePruner(
                pruned,
                example,
                importance=importance,
                pruning_ratio=TP_MAX_RATIO,
                iterative_steps=TP_STEPS,
                ignored_layers=ignored,
            )
            for _ in range(TP_STEPS):
                pruner.step()
                macs, _ = tp.utils.count_ops_and_params(pruned, example)
                if macs <= budget.flops_target * base_macs:
                    break
    with stage("pruned module forward"), torch.no_grad():
        pruned(example)
    path = out / "compact.onnx"
    with stage("export"), quiet():
        if exporter == "legacy":
            torch.onnx.export(
                pruned,
                (example,),
                str(path),
                dynamo=False,
                input_names=["input"],
                dynamic_axes={"input": {0: "batch"}},
            )
        else:
            torch.onnx.export(
                pruned,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                input_names=["input"],
            )
    return pruned, path


def deploysparse_workflow(
    model: nn.Module,
    example: torch.Tensor,
    budget: Budget,
    calib: Mapping[str, np.ndarray],
    out: Path,
    dead_threshold: float | None = None,
):
    """export_onnx(keep_bn=True) -> api.prune(criterion="l1") -> save_model; returns (PruneResult, path).

    dead_threshold None keeps deploysparse's default; 0 treats only exactly-constant filters as dead.
    """
    from deploysparse import api
    from deploysparse.frontend.torch_export import export_onnx
    from deploysparse.modelio import save_model

    with stage("export"), quiet():
        source = export_onnx(model, example, out / "model.onnx", keep_bn=True)
    kwargs = {"ratio": budget.ratio} if budget.ratio is not None else {"flops_target": budget.flops_target}
    if dead_threshold is not None:
        kwargs["dead_threshold"] = dead_threshold
    with stage("prune"):
        result = api.prune(source, criterion="l1", calib=dict(calib), **kwargs)
    with stage("save"):
        path = save_model(result.model, out / "compact.onnx")
    return result, Path(path)
