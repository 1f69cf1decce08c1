"""Carry a pruning plan back to the PyTorch module, for fine-tuning the compact network.

Surgery edits the ONNX graph; its `SurgeryResult` records, in the original initializer names (which
the front end kept equal to parameter names), which indices every tensor kept along which axis and
which tensors got new values (merged or re-weighted consumers, folded biases). Replaying that record
on a deep copy of the module gives a compact module that computes what the compact ONNX computes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import onnx
import torch
from torch import nn

from deploysparse.errors import PlanError


class SurgeryRecord(Protocol):
    """What `apply_plan` reads from `deploysparse.graph.surgery.SurgeryResult`."""

    slices: Mapping[str, Mapping[int, np.ndarray]]
    biases: Mapping[str, np.ndarray]
    values: Mapping[str, np.ndarray]


def apply_plan(module: nn.Module, surgery: SurgeryRecord) -> nn.Module:
    """Return a compact deep copy of `module` with the channels surgery removed; `module` is untouched.

    `surgery` is a SurgeryResult, or the PruneResult `deploysparse.api.prune` returns (its
    `.surgery`). Raises PlanError when the record names a tensor of a submodule that does not exist,
    or a slice or value does not fit the tensor.
    """
    surgery = getattr(surgery, "surgery", surgery)
    compact = copy.deepcopy(module)
    tensors = _named_tensors(compact)
    groups_before = {
        name: m.groups for name, m in compact.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
    }
    for name, axes in surgery.slices.items():
        if _skip_graph_constant(name, tensors, compact):
            continue
        tensor = tensors[name]
        for axis, kept in sorted(axes.items()):
            index = torch.as_tensor(np.asarray(kept, dtype=np.int64))
            if tensor.dim() <= axis or (index.numel() and int(index.max()) >= tensor.shape[axis]):
                raise PlanError(
                    f"slice of {name} along axis {axis} does not fit its shape {tuple(tensor.shape)}"
                )
            tensor = tensor.index_select(axis, index)
        _replace(compact, name, tensor)
        tensors[name] = tensor
    for name, value in surgery.values.items():
        if _skip_graph_constant(name, tensors, compact):
            continue
        old = tensors[name]
        new = torch.as_tensor(np.asarray(value)).to(old.dtype)
        if new.dim() != old.dim() or (name in surgery.slices and new.shape != old.shape):
            raise PlanError(
                f"new value of {name} has shape {tuple(new.shape)}, the module has {tuple(old.shape)}"
            )
        _replace(compact, name, new)
        tensors[name] = new
    for weight_name, bias in surgery.biases.items():
        _set_bias(compact, weight_name, bias)
    _fix_module_attributes(compact, groups_before, getattr(surgery, "model", None))
    return compact


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    named = {name: p.data for name, p in module.named_parameters(remove_duplicate=False)}
    named.update(dict(module.named_buffers(remove_duplicate=False)))
    return named


def _skip_graph_constant(name: str, tensors: Mapping[str, torch.Tensor], module: nn.Module) -> bool:
    """Exporter-made constants (reshape targets, clip bounds) have no module tensor: torch derives them.

    A name that points into an existing submodule but matches none of its tensors is a mismatch
    between plan and module, not a graph constant.
    """
    if name in tensors:
        return False
    owner, _, _ = name.rpartition(".")
    submodules = dict(module.named_modules())
    if owner and owner in submodules:
        raise PlanError(f"the surgery record names {name}, which module {owner!r} does not have")
    return True


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_name)
    value = value.detach().clone().contiguous()
    if attr in owner._parameters and owner._parameters[attr] is not None:
        owner._parameters[attr] = nn.Parameter(value, requires_grad=owner._parameters[attr].requires_grad)
    else:
        owner._buffers[attr] = value


def _set_bias(module: nn.Module, weight_name: str, bias: np.ndarray) -> None:
    owner_name, _, attr = weight_name.rpartition(".")
    if attr != "weight":
        raise PlanError(f"a new bias is keyed by {weight_name}, which is not a module's weight")
    try:
        owner = module.get_submodule(owner_name)
    except AttributeError:
        raise PlanError(
            f"a new bias belongs to {weight_name}, but the module has no {owner_name!r}"
        ) from None
    weight = owner.weight
    value = torch.as_tensor(np.asarray(bias)).to(weight.dtype)
    out_channels = (
        weight.shape[1] * owner.groups
        if isinstance(owner, nn.modules.conv._ConvTransposeNd)
        else weight.shape[0]
    )
    if value.shape != (out_channels,):
        raise PlanError(
            f"new bias for {weight_name} has shape {tuple(value.shape)}, expected ({out_channels},)"
        )
    owner.bias = nn.Parameter(value.clone(), requires_grad=weight.requires_grad)


def _fix_module_attributes(
    module: nn.Module, groups_before: Mapping[str, int], compact_graph: onnx.ModelProto | None
) -> None:
    """Make the attributes that describe shapes agree with the sliced tensors (repr, re-export, checks)."""
    graph_groups = _conv_groups_in_graph(compact_graph)
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.conv._ConvNd):
            _fix_conv(sub, groups_before[name], graph_groups.get(f"{name}.weight"))
        elif isinstance(sub, nn.modules.batchnorm._NormBase):
            reference = sub.weight if sub.weight is not None else sub.running_mean
            if reference is not None:
                sub.num_features = reference.shape[0]
        elif isinstance(sub, nn.Linear):
            sub.out_features, sub.in_features = sub.weight.shape
        elif isinstance(sub, nn.PReLU):
            sub.num_parameters = sub.weight.numel()


def _fix_conv(conv: nn.modules.conv._ConvNd, groups_before: int, graph_group: int | None) -> None:
    weight = conv.weight
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    if graph_group is not None:
        groups = graph_group
    elif groups_before > 1 and weight.shape[1] == 1 and not transposed:
        groups = weight.shape[0] // (conv.out_channels // groups_before)
    else:
        groups = groups_before
    conv.groups = groups
    if transposed:
        conv.in_channels, conv.out_channels = weight.shape[0], weight.shape[1] * groups
    else:
        conv.out_channels, conv.in_channels = weight.shape[0], weight.shape[1] * groups


def _conv_groups_in_graph(model: onnx.ModelProto | None) -> dict[str, int]:
    """`group` of every Conv in the compact graph, by weight name: the authority for grouped convs."""
    if model is None:
        return {}
    groups = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            groups[node.input[1]] = group
    return groups
