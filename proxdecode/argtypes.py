"""argparse types and the help formatter of ``proxdecode``'s subcommands (``cli`` and ``rate``).

Bad input is refused while the command line is parsed, with the option's name and the
allowed range in the message, before any model loads: a wrong ``-n`` should cost nothing,
not a model load and then a traceback.
"""

from __future__ import annotations

import argparse
import math


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default where it says something: not None, False or [], and not twice."""

    def _get_help_string(self, action):
        empty = action.default is None or action.default is False or action.default == []
        if empty or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def prompt(text: str) -> str:
    """argparse type: a prompt with some text, refused before any model loads (an empty one
    has no tokens to continue from)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty prompt has no tokens to continue from")
    return text


def at_least(low: int):
    """argparse type: an integer >= ``low``, refused before any model loads."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def number(low=None, high=None, low_open=False):
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            where = "" if low is None and high is None else (
                f" in {'(' if low_open or low is None else '['}{'-inf' if low is None else f'{low:g}'}, "
                f"{'inf)' if high is None else f'{high:g}]'}")
            raise argparse.ArgumentTypeError(f"must be a finite number{where}, got {text}")
        return value
    return parse
