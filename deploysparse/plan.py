"""A pruning plan: which channels of each group stay, and how consumers absorb the ones that go.

The plan is the hand-off between the criteria and the surgery, and the file (`plan.json`) a user
keeps, reviews and re-applies with `prune --plan`. Groups are recorded with their members (names and
axes), so a plan applied to another model fails with a message instead of slicing the wrong weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploysparse.atomic import write_text
from deploysparse.errors import PlanError

if TYPE_CHECKING:
    from deploysparse.budget.outcome import BudgetOutcome, CappedGroup
    from deploysparse.graph.analysis import GraphAnalysis

PLAN_FORMAT = 1


@dataclass
class Plan:
    """keep: group id -> sorted kept channel indices (a group not listed keeps everything).

    merges: group id -> (removed src, kept dst, factor): before slicing, every consumer's input
    column dst gains factor * column src (channel-similarity merging).
    scales: group id -> per-channel factor on consumers' input columns (PFP reweighting).
    constants: activation tensor -> value each channel (or flattened feature) holds when it is
    constant; removed constant channels are folded into the consumers' bias with these values.
    """

    keep: dict[str, np.ndarray] = field(default_factory=dict)
    merges: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)
    scales: dict[str, np.ndarray] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    criterion: str = ""
    notes: list[str] = field(default_factory=list)
    # --latency-target: predicted_ms, original_ms, and measured_ms, measured_original_ms, corrections
    # when the compact model was timed (deploysparse.latency)
    latency: dict[str, float] = field(default_factory=dict)
    # How the plan stands against the budget's target (None: no target, or a plan read from a file)
    # and the groups --max-layer-ratio held; neither is written to plan.json (a plan applied again
    # has no target).
    outcome: BudgetOutcome | None = None
    capped: list[CappedGroup] = field(default_factory=list)

    def kept(self, gid: str, size: int) -> np.ndarray:
        """Kept channel indices of a group of `size` channels."""
        if gid in self.keep:
            return np.asarray(self.keep[gid], dtype=np.int64)
        return np.arange(size, dtype=np.int64)

    def removed_count(self, ga: GraphAnalysis) -> dict[str, int]:
        return {g.id: g.size - len(self.kept(g.id, g.size)) for g in ga.groups}

    def to_json(self, ga: GraphAnalysis) -> dict:
        groups = []
        for g in ga.groups:
            kept = self.kept(g.id, g.size)
            entry = {
                "id": g.id,
                "label": g.label,
                "channels": g.size,
                "keep": [int(i) for i in kept],
                "members": [m.to_json() for m in g.members if m.role != "tensor"],
            }
            if g.id in self.merges:
                entry["merges"] = [[int(a), int(b), float(f)] for a, b, f in self.merges[g.id]]
            if g.id in self.scales:
                entry["scales"] = [float(v) for v in self.scales[g.id]]
            groups.append(entry)
        return {
            "format": PLAN_FORMAT,
            "criterion": self.criterion,
            "model_fingerprint": fingerprint(ga),
            "notes": self.notes,
            "groups": groups,
            "constants": {  # null: the channel is not constant (JSON has no NaN)
                k: [float(x) if np.isfinite(x) else None for x in np.asarray(v, dtype=np.float64).reshape(-1)]
                for k, v in self.constants.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict, ga: GraphAnalysis, source: str = "plan") -> Plan:
        """Read a plan written by `to_json` for the same model; mismatches raise PlanError.

        Every value is checked before anything is applied (a plan is a file a person may edit): a
        fractional or string index, a NaN scale or a group of the wrong type is refused, naming the
        group and the key, instead of being coerced into another plan than the one written."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "groups" not in data:
            raise PlanError(f"{source}: not a deploysparse plan (format {PLAN_FORMAT})")
        if data.get("model_fingerprint") != fingerprint(ga):
            raise PlanError(
                f"{source}: the plan was made for another model (its channel groups differ from this one's)"
            )
        sizes = {g.id: g.size for g in ga.groups}
        _check_plan_json(data, sizes, source)
        plan = cls(criterion=data.get("criterion", ""), notes=list(data.get("notes", [])))
        for entry in data["groups"]:
            gid = entry["id"]
            keep = np.asarray(entry.get("keep", list(range(sizes[gid]))), dtype=np.int64)
            if len(keep) != sizes[gid]:
                plan.keep[gid] = keep
            if "merges" in entry:
                plan.merges[gid] = [(int(a), int(b), float(f)) for a, b, f in entry["merges"]]
            if "scales" in entry:
                plan.scales[gid] = np.asarray(entry["scales"], dtype=np.float64)
        plan.constants = {
            k: np.asarray([np.nan if x is None else x for x in v], dtype=np.float64)
            for k, v in data.get("constants", {}).items()
        }
        return plan

    def save(self, path: str | Path, ga: GraphAnalysis) -> None:
        write_text(path, json.dumps(self.to_json(ga), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path, ga: GraphAnalysis) -> Plan:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise PlanError(f"{path}: no such plan file") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"{path}: not JSON ({exc})") from exc
        return cls.from_json(data, ga, source=str(path))


_GROUP_KEYS = {"id", "label", "channels", "keep", "members", "merges", "scales"}
_PLAN_KEYS = {"format", "criterion", "model_fingerprint", "notes", "groups", "constants"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_plan_json(data: dict, sizes: dict[str, int], source: str) -> None:
    """The schema of plan.json, checked in full; the first violation raises PlanError naming it."""

    def fail(where: str, what: str) -> None:
        raise PlanError(f"{source}: {where}: {what}")

    unknown = sorted(set(data) - _PLAN_KEYS)
    if unknown:
        fail("top level", f"unknown key(s) {', '.join(unknown)}")
    if not isinstance(data.get("criterion", ""), str):
        fail("criterion", "must be a string")
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        fail("notes", "must be a list of strings")
    if not isinstance(data["groups"], list):
        fail("groups", "must be a list of group objects")
    seen: set[str] = set()
    for i, entry in enumerate(data["groups"]):
        if not isinstance(entry, dict):
            fail(f"groups[{i}]", f"must be an object, got {type(entry).__name__}")
        gid = entry.get("id")
        if not isinstance(gid, str):
            fail(f"groups[{i}].id", "must be a string")
        if gid not in sizes:
            fail(f"groups[{i}]", f"unknown group {gid!r}")
        if gid in seen:
            fail(f"group {gid}", "listed twice")
        seen.add(gid)
        size = sizes[gid]
        extra = sorted(set(entry) - _GROUP_KEYS)
        if extra:
            fail(f"group {gid}", f"unknown key(s) {', '.join(extra)}")
        if "channels" in entry and (not _is_int(entry["channels"]) or entry["channels"] != size):
            fail(f"group {gid}.channels", f"must be {size}, got {entry['channels']!r}")
        keep = entry.get("keep", [])
        if not isinstance(keep, list) or not all(_is_int(k) for k in keep):
            fail(f"group {gid}.keep", "must be a list of integer channel indices")
        if any(not 0 <= k < size for k in keep) or len(set(keep)) != len(keep):
            fail(f"group {gid}.keep", f"indices must be distinct and in 0..{size - 1}")
        if "merges" in entry:
            merges = entry["merges"]
            if not isinstance(merges, list) or not all(
                isinstance(m, list)
                and len(m) == 3
                and _is_int(m[0])
                and _is_int(m[1])
                and _is_finite(m[2])
                and 0 <= m[0] < size
                and 0 <= m[1] < size
                and m[0] != m[1]
                for m in merges
            ):
                fail(
                    f"group {gid}.merges",
                    f"must be [removed, kept, factor] triples: two distinct indices in 0..{size - 1} and "
                    "a finite factor",
                )
        if "scales" in entry:
            scales = entry["scales"]
            if not isinstance(scales, list) or len(scales) != size or not all(_is_finite(v) for v in scales):
                fail(f"group {gid}.scales", f"must be {size} finite numbers")
    constants = data.get("constants", {})
    if not isinstance(constants, dict):
        fail("constants", "must map tensor names to lists of numbers")
    for name, values in constants.items():
        if not isinstance(values, list) or not all(v is None or _is_finite(v) or v != v for v in values):
            fail(f"constants[{name!r}]", "must be a list of finite numbers (null: not constant)")


def fingerprint(ga: GraphAnalysis) -> str:
    """A hash of the group structure (ids, sizes, member names): same model, same fingerprint."""
    h = hashlib.sha256()
    for g in ga.groups:
        h.update(f"{g.id}:{g.size}:".encode())
        for m in g.members:
            if m.role != "tensor":
                h.update(f"{m.role}/{m.name}/{m.axis};".encode())
    return h.hexdigest()[:16]


def kept_identities(ga: GraphAnalysis, plan: Plan) -> np.ndarray:
    """Per channel identity of the analysis: True when the plan keeps it."""
    kept = np.ones(len(ga.identity_group), dtype=bool)
    for gid, keep in plan.keep.items():
        ids = ga.group_identities[ga.group_index(gid)]
        mask = np.zeros(len(ids), dtype=bool)
        mask[np.asarray(keep, dtype=np.int64)] = True
        kept[ids[~mask]] = False
    return kept
