"""Reading the files a user gives: one place for the ways a file can be wrong.

Every reader here turns the failures of a real file system and of hand-edited text into a
:class:`~trustlab.errors.TrustlabError` that names the file: a folder where a file was expected,
a file that is not UTF-8, one far too large for what it claims to be, malformed JSON/YAML, and
YAML that expands aliases (a 1 KB "billion laughs" document can take minutes and all memory
before any schema sees it, so aliases are refused outright: none of trustlab's files need them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from trustlab.errors import ConfigError, TrustlabError

#: the largest text file (profile, nodes file, config, table, summary) trustlab reads, in bytes
MAX_TEXT_BYTES = 4 * 1024 * 1024


def existing_file(path: str | Path, what: str = "file", error: type[TrustlabError] = ConfigError) -> Path:
    """``path`` as a Path, after checking that it is an existing regular file."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path} is a folder, not a {what}: give the {what} itself")
    if not path.exists():
        raise error(f"{what} {path} does not exist")
    return path


def read_text(path: str | Path, what: str = "file", error: type[TrustlabError] = ConfigError,
              max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of ``path``; a one-line ``error`` for a folder, a huge, unreadable or non-UTF-8 file."""
    path = existing_file(path, what, error)
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path} is {size:,} bytes, more than the {max_bytes:,} a {what} may have: is it the right file?")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (spreadsheet and Notepad exports) is not text
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(f"{path}: not UTF-8 text (byte {e.start}, line {line}): save the {what} as UTF-8") from None


class _NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors and aliases instead of expanding them."""

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML's hook
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.constructor.ConstructorError(None, None, "YAML aliases (*name) are not accepted", mark)
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise yaml.constructor.ConstructorError(None, None, "YAML anchors (&name) are not accepted", event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str, error: type[TrustlabError] = ConfigError, finite: bool = False) -> Any:
    """The document in ``text``; aliases are refused, and with ``finite`` so are NaN and infinities."""
    try:
        doc = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(f"{source}: malformed YAML{where} ({getattr(e, 'problem', None) or e.__class__.__name__})") from None
    if finite:
        _check_finite(doc, source, error)
    return doc


def _check_finite(node: Any, source: str, error: type[TrustlabError], where: str = "") -> None:
    if isinstance(node, float) and not math.isfinite(node):
        raise error(f"{source}: {where or '(top level)'} is {node}, not a finite number")
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, source, error, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, source, error, f"{where}[{i}]")


def read_yaml(path: str | Path, what: str = "file", error: type[TrustlabError] = ConfigError,
              finite: bool = False) -> Any:
    return parse_yaml(read_text(path, what, error), str(path), error, finite)


def read_json(path: str | Path, what: str = "file", error: type[TrustlabError] = ConfigError) -> Any:
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON (line {e.lineno}: {e.msg}): is the {what} truncated?") from None


#: the most pixels an image file may claim before trustlab decodes it (a 60000x60000 PNG is a few KB)
MAX_IMAGE_PIXELS = 8192 * 8192


def on_white(rgba):
    """A PIL RGBA image composited on white, as RGB: how trustlab flattens transparent images."""
    from PIL import Image

    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _eight_bit(im, path: Path, error: type[TrustlabError], where: str):
    """``im`` with 16-bit and float greys scaled to 8 bits by their range.

    PIL's own conversion clips them at 255 instead, so a 16-bit PNG turns almost white
    and every such image would look like every other one. Mode ``I`` (32-bit integers, as PIL
    opens a 16-bit PGM) carries no range of its own: it is taken as 16-bit, and refused beyond it.
    Floats are taken as [0, 1].
    """
    import numpy as np
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode == "I":
        values = np.asarray(im, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise error(f"{where}{path} holds 32-bit integer pixels outside 0..65535: save it as an 8- or 16-bit image")
        return Image.fromarray((values / 257).round().astype(np.uint8), "L")
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise error(f"{where}{path} holds float pixels outside [0, 1]: scale it to [0, 1] or save it as an 8-bit image")
        return Image.fromarray((values * 255).round().astype(np.uint8), "L")
    return im


def read_image_rgba(path: str | Path, error: type[TrustlabError] = ConfigError, where: str = ""):
    """The image at ``path`` as a PIL RGBA image; its header's size is checked before decoding.

    ``where`` prefixes every message (e.g. ``captions.jsonl:12: ``) so the user finds the line.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise error(f"{where}{path} is a folder, not an image")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise error(f"{where}{path} claims {im.width:,}x{im.height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
                            "trustlab decodes: resize it first")
            return _eight_bit(im, path, error, where).convert("RGBA")
    except FileNotFoundError:
        raise error(f"{where}image {path} does not exist") from None
    except Image.DecompressionBombError:
        raise error(f"{where}{path} claims more pixels than PIL will decode: resize it first") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise error(f"{where}{path} is not an image PIL can read ({e.__class__.__name__})") from None
