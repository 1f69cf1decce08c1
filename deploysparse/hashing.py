"""Content hashes that tie reports and build metadata to the files they describe."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from deploysparse.modelio import external_data_files

_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hash of one file's bytes (a report lists each file it describes with this)."""
    return _sha256_of([Path(path)])


def sha256_model(path: str | os.PathLike[str]) -> str:
    """Hash of a model file and the external data files it reads: build metadata ties an artifact to
    the whole source model, weights included (whatever its data file is called)."""
    path = Path(path)
    return _sha256_of([path, *external_data_files(path)])


def _sha256_of(parts: list[Path]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        with open(part, "rb") as handle:
            for block in iter(lambda h=handle: h.read(_BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()
