"""A pruning plan: which channels of each group stay, and how consumers absorb the ones that go.

The plan is the hand-off between the criteria and the surgery, and the file (`plan.json`) a user
keeps, reviews and re-applies with `prune --plan`. Groups are recorded with their members (names and
axes), so a plan applied to another model fails with a message instead of slicing the wrong weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploysparse.atomic import write_text
from deploysparse.errors import PlanError

if TYPE_CHECKING:
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
            "constants": {
                k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in self.constants.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict, ga: GraphAnalysis, source: str = "plan") -> Plan:
        """Read a plan written by `to_json` for the same model; mismatches raise PlanError."""
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or "groups" not in data:
            raise PlanError(f"{source}: not a deploysparse plan (format {PLAN_FORMAT})")
        if data.get("model_fingerprint") != fingerprint(ga):
            raise PlanError(
                f"{source}: the plan was made for another model (its channel groups differ from this one's)"
            )
        plan = cls(criterion=str(data.get("criterion", "")), notes=list(data.get("notes", [])))
        sizes = {g.id: g.size for g in ga.groups}
        for entry in data["groups"]:
            gid = entry.get("id")
            if gid not in sizes:
                raise PlanError(f"{source}: unknown group {gid!r}")
            keep = np.asarray(entry.get("keep", []), dtype=np.int64)
            if len(keep) != sizes[gid]:
                plan.keep[gid] = keep
            if "merges" in entry:
                plan.merges[gid] = [(int(a), int(b), float(f)) for a, b, f in entry["merges"]]
            if "scales" in entry:
                plan.scales[gid] = np.asarray(entry["scales"], dtype=np.float64)
        plan.constants = {k: np.asarray(v, dtype=np.float64) for k, v in data.get("constants", {}).items()}
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
