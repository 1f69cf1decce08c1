"""`deploysparse sweep --ray auto` with no Ray running: it starts a local one and stops it again.

A module of its own: the other Ray tests keep one Ray alive per module, and this one must start
without any. Skipped without Ray.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from tests.test_sweep import SWEEP, write_sweep  # noqa: E402
from tests.test_sweep_ray import descendants, wait_gone  # noqa: E402


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # no other module's Ray may be running (conftest: one_ray_at_a_time)
def test_cli_ray_auto_starts_and_stops_a_local_ray(
    tmp_path: Path, cli, monkeypatch, one_ray_at_a_time
) -> None:
    assert not ray.is_initialized()
    started: set[int] = set()
    real_shutdown = ray.shutdown

    def shutdown(*args, **kwargs):
        started.update(descendants(os.getpid()))  # the local Ray's processes, just before it stops
        return real_shutdown(*args, **kwargs)

    monkeypatch.setattr(ray, "shutdown", shutdown)
    text = SWEEP.replace("flops_target: [0.5, 0.1]", "flops_target: [0.5]")
    result = cli("sweep", write_sweep(tmp_path, text), "-o", tmp_path / "out", "--ray", "auto")
    assert result.code == 0, result.err[-2000:]
    assert "[1/1] digits l1 flops_target 0.5" in result.err
    assert (tmp_path / "out" / "best.json").is_file()
    assert started, "--ray auto should have started a local Ray"
    assert not ray.is_initialized()
    assert wait_gone(started) == set(), "--ray auto left Ray processes behind"
