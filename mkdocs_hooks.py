"""MkDocs build hooks: the site's home page is the README, so the front page has one source.

``on_page_read_source`` hands MkDocs ``README.md`` for ``index.md``, with its title moved above
the two commands (the README must open with them) and its ``docs/...`` links made relative to
the documentation folder.
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).parent / "README.md"


def front_page(readme: str) -> str:
    """The README as the documentation's home page."""
    commands_end = readme.index("```\n", 3) + 4
    commands, rest = readme[:commands_end], readme[commands_end:].lstrip("\n")
    title, body = rest.split("\n", 1)
    return (title + "\n\n" + commands + body).replace("](docs/", "](")


def on_page_read_source(page, config):
    if page.file.src_uri == "index.md":
        return front_page(README.read_text(encoding="utf-8"))
    return None
