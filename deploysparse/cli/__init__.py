"""The `deploysparse` command line: one thin module per verb, each parsing options and calling the library.

Commands are loaded lazily (importing torch or onnxruntime costs seconds), and every
`DeploysparseError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from deploysparse.errors import DeploysparseError

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
    """Console entry point: run the CLI, turning project errors into one line and exit code 2."""
    try:
        code = cli.main(args=argv, standalone_mode=False)
    except DeploysparseError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    if isinstance(code, int) and code != 0:
        sys.exit(code)
