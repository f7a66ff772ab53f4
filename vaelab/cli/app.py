"""The Typer app and what every verb shares: one-line errors instead of tracebacks, printing on the main
process only, and leaving the process group together."""

from __future__ import annotations

import functools
import warnings

import typer

from ..errors import VaelabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, compare, evaluate and explore VAE-family image generators. Every command after `train` reads only the run folder.",
)

# every verb after `train` runs where the run's work is fastest unless told otherwise (vaelab.run.resolve_device)
DEVICE_HELP = "auto (a GPU where there is one, else the CPU) | cpu | cuda | cuda:N | mps"


def fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def say(message: str) -> None:
    """Print on the main process only (under torchrun every process runs this command)."""
    from ..processes import is_main_process

    if is_main_process():
        typer.echo(message)


def user_errors(fn):
    """Turn VaelabError into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.simplefilter("default")
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
        try:
            result = fn(*args, **kwargs)
        except VaelabError as exc:
            fail(str(exc))
        from ..processes import leave_process_group

        leave_process_group()  # under torchrun: every process finishes together
        return result

    return wrapper


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="print the version and exit")):
    if version:
        from .. import __version__

        typer.echo(__version__)
        raise typer.Exit()
