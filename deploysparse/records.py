"""Plain-data records of result objects, for the JSON the commands print and the reports keep.

Most records name each value after the attribute that holds it (`"batch": self.batch`). Writing such
a record as a list of attribute names keeps each key equal to its attribute by construction, and
leaves the keys that rename or convert a value to be written by hand, where a reader sees them.
"""

from __future__ import annotations

from typing import Any


def attribute_record(obj: object, *names: str) -> dict[str, Any]:
    """`{name: obj.name}` for each of `names`, in that order (properties included)."""
    return {name: getattr(obj, name) for name in names}
