"""How wide, and whether in colour: the terminal decisions every text renderer shares."""

from __future__ import annotations

import os
import sys

TEXT_WIDTH = 110  # columns when the output is not a terminal and COLUMNS is unset


def use_color(color: str, to_terminal: bool) -> bool:
    """``--color auto|always|never``; auto colours a terminal unless NO_COLOR is set."""
    if color == "always":
        return True
    if color == "never" or os.environ.get("NO_COLOR"):
        return False
    return to_terminal and sys.stdout.isatty()


def text_width(to_terminal: bool) -> int:
    """The terminal's width (at most 160) on a terminal, else $COLUMNS or ``TEXT_WIDTH``."""
    if to_terminal and sys.stdout.isatty():
        try:
            return min(os.get_terminal_size().columns, 160)
        except OSError:
            pass
    return int(os.environ.get("COLUMNS", TEXT_WIDTH))
