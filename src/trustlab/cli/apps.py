"""How every ``trustlab`` (sub-)command app is made, in one place.

Help is click's plain formatter rather than rich's panels: rich squeezes the option column to the
terminal and cuts long option names (``--duplicate-sche…``) that a user must type whole, while
click wraps the description and keeps every name intact at any width. typer (0.19) still escapes
the ``[default: …]`` of each option for rich whenever rich is installed, so plain help would show
``\\[default: …]``; this module tells typer's core that rich is not in use, which is what the
plain formatter needs (typer is pinned below 0.20 in ``constraints.txt``).
"""

from __future__ import annotations

import typer
import typer.core

typer.core.HAS_RICH = False  # once, for every app: only the escaping of help for rich reads it once rich_markup_mode is None


def new_app(**settings) -> typer.Typer:
    """A typer app that prints its help when called without a command, with plain help."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, **settings)
