"""The ``lstm-doctor`` command group: every command of ``cli.commands`` under one name.

Exit codes: 0 no finding at or above --fail-on; 1 findings at or above it;
2 usage or input error (one line on stderr, no traceback); 3 a bug in
lstm-doctor (one line asking for a report; ``--debug`` or LSTM_DOCTOR_DEBUG=1
shows the traceback); 130 interrupted (Ctrl-C or SIGTERM), nothing half-written.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_now(signum, frame):  # pragma: no cover - exercised in a subprocess
    """Before the command runs or after it finished, nothing is half-written: exit at once."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(2, b"lstm-doctor: interrupted\n")
    os._exit(130)


def _is_cli_process() -> bool:
    """True when this process is ``lstm-doctor`` or ``python -m lstm_doctor`` (not a
    library user, not a test runner importing the CLI)."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None:
        return spec.name in ("lstm_doctor", "lstm_doctor.__main__")
    return os.path.basename(getattr(main_module, "__file__", "") or "").removesuffix(".exe") == "lstm-doctor"


# Start-up: a Ctrl-C or SIGTERM while the imports below run (a traceback, or exit -2,
# with Python's defaults) exits 130. Installed before anything else is imported.
if _is_cli_process():
    for _sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_sig) is not signal.SIG_IGN or _sig == signal.SIGTERM:
            signal.signal(_sig, _interrupted_now)

import click  # noqa: E402

from lstm_doctor import __version__  # noqa: E402
from lstm_doctor.cli import commands  # noqa: E402


class DoctorGroup(click.Group):
    """click's group, with errors in one line: a usage error is one line on stderr
    (with where ``--help`` is) and exit 2; an interrupt exits 130, not "Aborted!" and 1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "lstm-doctor")
            message = " ".join(exc.format_message().split())
            click.echo(f"lstm-doctor: error: {message} (`{where} --help` for more)", err=True)
            sys.exit(commands.EXIT_USAGE)
        except click.ClickException as exc:
            click.echo(f"lstm-doctor: error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo("lstm-doctor: interrupted", err=True)
            sys.exit(commands.EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=DoctorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstm-doctor")
@click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
              callback=lambda ctx, param, value: os.environ.__setitem__("LSTM_DOCTOR_DEBUG", "1") if value else None,
              help="Show the full traceback of an internal error (also LSTM_DOCTOR_DEBUG=1).")
def cli():
    """A doctor for LSTM layers: re-runs the layer in an instrumented scan and says,
    with numbers and a fix, what is wrong.

    \b
    Start with:  lstm-doctor demo
    Then:        lstm-doctor diagnose MODEL --inputs X.npy
    """


for _command in commands.ALL:
    cli.add_command(_command)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    """The console entry point. While the command runs, SIGINT and SIGTERM raise
    KeyboardInterrupt, so temporary files are removed and the exit is 130; before
    and after it (start-up, teardown) they exit 130 at once."""
    # A job started in the background by a non-interactive shell inherits SIGINT
    # ignored; keep that choice (the user asked for it), take over SIGTERM always.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        cli(prog_name="lstm-doctor")
    except KeyboardInterrupt:
        click.echo("lstm-doctor: interrupted", err=True)
        code = commands.EXIT_INTERRUPTED
    except SystemExit as exc:
        code = exc.code
    # Teardown (flushing, atexit, the interpreter's finalisation): exit 130 at once.
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _interrupted_now)
    sys.exit(code)
