"""The `deploysparse` command line: one thin module per verb, each parsing options and calling the library.

Commands are loaded lazily (importing torch or onnxruntime costs seconds). Exit codes: 0 ok, 1 a
regression (validate, check) or a bug of ours, 2 bad input, 3 a budget not met under --strict
(`prune`, and `run` with a recipe's `prune: strict: true`), 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM, for the commands that clean up on it: `run`, `demo`). Every `DeploysparseError` (bad
input) becomes one `error:` line and exit code 2; an exception from deploysparse itself becomes one
line naming the command, with `--debug` (or DEPLOYSPARSE_DEBUG=1) for the traceback, and exit code 1.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import click

from deploysparse.cli.signals import TERMINATED_EXIT_CODE, Terminated
from deploysparse.errors import DeploysparseError

# A budget whose target was not met, under --strict: the outputs are written, the exit code says so.
BUDGET_UNMET_EXIT_CODE = 3

# verb -> module under deploysparse.cli that defines `command`
COMMANDS: dict[str, str] = {
    "analyze": "analyze",
    "prune": "prune",
    "build": "build",
    "validate": "validate",
    "bench": "bench",
    "check": "check",
    "run": "run",
    "sweep": "sweep",
    "demo": "demo",
    "advise-depth": "advise_depth",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in COMMANDS if _module_exists(COMMANDS[name]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None or not _module_exists(module_name):
            return None
        module = importlib.import_module(f"deploysparse.cli.{module_name}")
        return module.command


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(f"deploysparse.cli.{name}") is not None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deploysparse")
def cli() -> None:
    """Prune the filters a CNN does not need, prove the compact model still answers like the original, ship it."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning every failure into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DEPLOYSPARSE_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        code = cli.main(args=args, prog_name="deploysparse", standalone_mode=False)
    except DeploysparseError as exc:
        if debug:
            raise
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(TERMINATED_EXIT_CODE)
    except click.ClickException as exc:  # a bad option or argument: one line, exit 2
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see {exc.ctx.command_path} --help)"
        click.echo(f"error: {_one_line(exc.format_message())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:  # the file system refused: a path the user gave, not a bug of ours
        if debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)
    except MemoryError:
        click.echo("error: out of memory (try a smaller batch or less calibration data)", err=True)
        sys.exit(2)
    except Exception as exc:
        if debug:
            raise
        command = _command_name(args)
        click.echo(
            f"error: internal error in `deploysparse {command}` ({type(exc).__name__}: {_one_line(exc)}); "
            "this is a bug in deploysparse: run again with --debug for the traceback and report it",
            err=True,
        )
        sys.exit(1)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def _one_line(exc: BaseException | str) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else type(exc).__name__


def _command_name(args: list[str]) -> str:
    return next((a for a in args if a in COMMANDS), "")
