"""How every ``trustlab`` (sub-)command app is made, in one place.

Help is click's plain formatter rather than rich's panels: rich squeezes the option column to the
terminal and cuts long option names (``--duplicate-sche…``) that a user must type whole, while
click wraps the description and keeps every name intact at any width.
"""

from __future__ import annotations

import typer


def new_app(**settings) -> typer.Typer:
    """A typer app that prints its help when called without a command, with plain help."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None, **settings)
