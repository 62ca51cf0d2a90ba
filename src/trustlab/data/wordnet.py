"""WordNet 3.0 from the Debian package ``wordnet-base``, read with nltk and no download.

nltk's reader wants the database files plus a ``lexnames`` file in one folder under one of its
data paths (it refuses other paths, symlinks resolved); Debian ships the files under
``/usr/share/wordnet`` without ``lexnames``. We copy the files into
``$TRUSTLAB_DATA/nltk/corpora/wordnet`` (about 30 MB), write ``lexnames`` there (the 45
lexicographer files of WordNet 3.0, a fixed part of its format) and add
``$TRUSTLAB_DATA/nltk`` to nltk's data path. ``$TRUSTLAB_DATA/raw/wordnet`` is searched first, for
users who copy the database files by hand.
"""

from __future__ import annotations

import functools
import shutil
import warnings
from pathlib import Path

from trustlab.data import packages
from trustlab.data.store import data_root
from trustlab.errors import DataError
from trustlab.runs import atomic_write_text

DEBIAN_DIR = Path("/usr/share/wordnet")
NEEDED = ("data.noun", "index.noun", "data.verb", "index.verb", "data.adj", "index.adj", "data.adv", "index.adv")

# Lexicographer file names of WordNet 3.0, in file-number order, with their syntactic category.
_LEXNAMES = (
    ["adj.all 3", "adj.pert 3", "adv.all 4"]
    + [f"noun.{n} 1" for n in ("Tops act animal artifact attribute body cognition communication event feeling "
                               "food group location motive object person phenomenon plant possession process "
                               "quantity relation shape state substance time").split()]
    + [f"verb.{n} 2" for n in ("body change cognition communication competition consumption contact creation "
                               "emotion motion perception possession social stative weather").split()]
    + ["adj.ppl 3"]
)


def _root() -> Path:
    return data_root() / "nltk" / "corpora" / "wordnet"


def _source() -> Path | None:
    for d in (data_root() / "raw" / "wordnet", DEBIAN_DIR):
        if all((d / f).exists() for f in NEEDED):
            return d
    return None


def fetch_wordnet() -> Path:
    """Install ``wordnet-base`` if needed and prepare the folder nltk reads; returns it."""
    src = _source()
    if src is None:
        packages.apt_install("wordnet-base", "WordNet 3.0")
        src = _source()
        if src is None:
            raise DataError(f"wordnet-base is installed but {DEBIAN_DIR} lacks {NEEDED[0]}: reinstall it")
    root = _root()
    root.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not (root / f.name).exists():
            shutil.copyfile(f, root / f".{f.name}.tmp")
            (root / f".{f.name}.tmp").replace(root / f.name)
    if not (root / "lexnames").exists():
        atomic_write_text(root / "lexnames", "".join(f"{i:02d}\t{name.replace(' ', chr(9))}\n"
                                                     for i, name in enumerate(_LEXNAMES)))
    return root


@functools.lru_cache(maxsize=1)
def wordnet():
    """nltk's WordNet reader over the local database (built once per process, about 3 s)."""
    try:
        import nltk
        from nltk.corpus.reader.wordnet import WordNetCorpusReader
    except ImportError:
        raise DataError("reading WordNet needs nltk: pip install 'trustlab[text]'") from None

    root = _root()
    if not all((root / f).exists() for f in (*NEEDED, "lexnames")):
        raise DataError("WordNet is not present: run `trustlab data fetch wordnet` (installs Debian wordnet-base)")
    if str(root.parents[1]) not in nltk.data.path:
        nltk.data.path.append(str(root.parents[1]))

    class LocalWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            """No mapping between WordNet versions: it serves multilingual data only, absent here."""
            return None

    with warnings.catch_warnings():  # no multilingual data: expected
        warnings.simplefilter("ignore", UserWarning)
        return LocalWordNet(str(root), None)


__all__ = ["fetch_wordnet", "wordnet"]
