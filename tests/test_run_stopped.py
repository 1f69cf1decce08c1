"""`deploysparse run` stopped mid-run by SIGTERM (kill, timeout, a CI runner cancelling a job) or
SIGINT (Ctrl-C): the staging folder beside OUTDIR is removed, as on success or error, OUTDIR keeps
what it held (or stays absent), and the exit code says how the run was stopped (README's table:
143 for SIGTERM, 130 for Ctrl-C).

Each case starts the real command on the bundled digits model (an entry point, so `run` exports it
first) in a child process, waits until the run reaches a given point (its files appear on disk),
sends the signal and reads what is left. The recipe benchmarks for far longer than the test waits,
so the signal always lands mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

# What Python does at start-up unless SIGINT is ignored: a test runner's worker may ignore it, and
# its children would inherit that. Then the command itself, as the console script runs it.
CHILD = (
    "import signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
    "from deploysparse.cli import main\n"
    "main(sys.argv[1:])\n"
)
# Long enough that no run reaches its end before the signal (the test stops it long before).
ENDLESS_BENCH = {"batches": [1], "warmup": 0, "iters": 1_000_000, "repeats": 1, "per_layer": False}
WAIT_S = 300  # a guard against a hung child, not a timing check


def _inputs(root: Path) -> tuple[Path, Path]:
    from deploysparse.zoo.digits import calibration_set

    calib = root / "calib.npy"
    np.save(calib, calibration_set()[:32])
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"prune": {"criterion": ["dead"]}, "bench": ENDLESS_BENCH}))
    return calib, recipe


def _staged(root: Path, name: str) -> list[Path]:
    """The run's staging folder beside OUTDIR, or the file `name` inside it once it is written."""
    return list(root.glob(f".out.staging-*/{name}" if name else ".out.staging-*"))


@pytest.mark.slow  # a child process that imports torch and exports the model
@pytest.mark.parametrize(
    ("sig", "code", "stop_at", "earlier"),
    [
        (signal.SIGTERM, 143, "compact.onnx", True),  # pruned, now building, validating or timing
        (signal.SIGTERM, 143, "", False),  # the staging folder just made; the export under way
        (signal.SIGINT, 130, "compact.onnx", True),
    ],
    ids=["sigterm-mid-run", "sigterm-at-start-no-outdir", "sigint-mid-run"],
)
def test_a_stopped_run_leaves_no_staging_folder_and_outdir_as_it_was(
    tmp_path: Path, sig: signal.Signals, code: int, stop_at: str, earlier: bool
) -> None:
    calib, recipe = _inputs(tmp_path)
    out = tmp_path / "out"
    before: dict[str, bytes] = {}
    if earlier:  # an earlier run's output: report.json and a model beside it
        out.mkdir()
        (out / "report.json").write_text('{"earlier": "run"}\n')
        (out / "compact.onnx").write_bytes(b"an earlier compact model")
        before = {p.name: p.read_bytes() for p in out.iterdir()}
    scratch = tmp_path / "tmp"  # the child's TMPDIR: its temporary folders (deploysparse-*) go too
    scratch.mkdir()
    args = [
        *("run", recipe, "--model", "deploysparse.zoo.digits:digits_model", "--input-shape", "1,1,16,16"),
        *("--calib", calib, "-o", out),
    ]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    try:
        deadline = time.monotonic() + WAIT_S
        while not _staged(tmp_path, stop_at):
            assert child.poll() is None, f"the run ended before it was stopped: {child.communicate()}"
            assert time.monotonic() < deadline, f"the run never reached {stop_at or 'its staging folder'}"
            time.sleep(0.01)
        child.send_signal(sig)
        stdout, stderr = child.communicate(timeout=WAIT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    assert child.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == ("terminated" if sig == signal.SIGTERM else "interrupted")
    assert "Traceback" not in stderr + stdout
    assert _staged(tmp_path, "") == [], "the staging folder survived"
    if earlier:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    else:
        assert not out.exists()
    ours = [p.name for p in scratch.iterdir() if p.name.startswith("deploysparse-")]
    assert ours == [], "temporary folders survived"  # (other libraries keep their own files there)


def test_sigterm_raises_only_while_active_and_once() -> None:
    """Inside: SIGTERM raises Terminated, and a second one (during the cleanup) is ignored. Outside:
    the handler that was there before is back. raise_signal delivers to this thread at once."""
    from deploysparse.cli.signals import Terminated, sigterm_raises

    def before(signum, frame):
        raise AssertionError("the previous handler ran inside the block")

    previous = signal.signal(signal.SIGTERM, before)
    try:
        with pytest.raises(Terminated), sigterm_raises():
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is before
        with sigterm_raises():
            with pytest.raises(Terminated):
                signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)  # the cleanup goes on
            assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)
