"""The ``lstm-doctor`` command group: every command of ``cli.commands`` under one name.

Exit codes: 0 no finding at or above --fail-on; 1 findings at or above it;
2 usage or input error (one line on stderr, no traceback); 130 interrupted.
"""

from __future__ import annotations

import click

from lstm_doctor import __version__
from lstm_doctor.cli import commands


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lstm-doctor")
def cli():
    """A doctor for LSTM layers: re-runs the layer in an instrumented scan and says,
    with numbers and a fix, what is wrong.

    \b
    Start with:  lstm-doctor demo
    Then:        lstm-doctor diagnose MODEL --inputs X.npy
    """


for _command in commands.ALL:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="lstm-doctor")
