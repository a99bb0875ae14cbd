"""Text corpora for the organisms' tokenizers and decoder pretraining — composed offline.

Nothing is downloaded. Two general-text sources exist on any Debian/Python machine:

- ``debian-docs``: the English prose Debian installs with its packages — ``/usr/share/common-licenses``
  (GPL, Apache, ...) and the READMEs, copyright files, changelogs and markdown notes under
  ``/usr/share/doc`` (gzipped files are read too);
- ``python-docstrings``: the docstrings of the Python standard library's source files (read with
  ``ast``, never imported).

Both are mixed with the same *task vocabulary* text (captions and questions about the organisms'
image classes, :func:`task_text`), so every organism's tokenizer can spell its answers. The corpus
is sorted and truncated deterministically; its size and SHA-256 go into the model card, since the
files present differ between machines.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import re
import sysconfig
from pathlib import Path

from ..data import DIGIT_CLASSES, FASHION_MNIST_CLASSES

CORPORA = ("debian-docs", "python-docstrings")
_DOC_ROOTS = (Path("/usr/share/common-licenses"), Path("/usr/share/doc"))
_SKIP_SUFFIXES = {".png", ".jpg", ".gif", ".svg", ".pdf", ".ico", ".woff", ".ttf", ".js", ".css", ".json", ".xml",
                  ".py", ".sh", ".c", ".h", ".conf", ".properties", ".html", ".htm", ".pl", ".rb"}


def _clean(text: str) -> str:
    """Drop lines that are mostly symbols (rulers, code), squeeze whitespace, keep paragraphs."""
    out = []
    for line in text.splitlines():
        s = " ".join(line.split())
        if not s:
            if out and out[-1]:
                out.append("")
            continue
        letters = sum(c.isalpha() for c in s)
        if letters < 0.6 * len(s) or len(s) < 3:
            continue
        out.append(s)
    return "\n".join(out).strip()


def _read_text(path: Path) -> str | None:
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError):
        return None
    if b"\x00" in raw[:4096]:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def debian_docs(max_chars: int, per_doc_chars: int = 40_000) -> list[str]:
    """Documents from /usr/share/common-licenses then /usr/share/doc, sorted by path, cleaned."""
    docs, total = [], 0
    seen = set()
    for root in _DOC_ROOTS:
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            suffixes = {s.lower() for s in path.suffixes}
            if suffixes & _SKIP_SUFFIXES:
                continue
            text = _read_text(path)
            if not text:
                continue
            text = _clean(text)
            digest = hashlib.sha1(text.encode()).digest()
            if len(text) < 200 or digest in seen:  # the same license text is copied into many packages
                continue
            seen.add(digest)
            text = text[:per_doc_chars]  # long changelogs would otherwise fill the corpus alone
            docs.append(text)
            total += len(text)
            if total >= max_chars:
                return docs
    return docs


def python_docstrings(max_chars: int) -> list[str]:
    """Docstrings (module, class, function) of the standard library's .py files, sorted by path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    skip = re.compile(r"(^|/)(test|tests|idlelib|lib2to3|site-packages|dist-packages)(/|$)")
    for path in sorted(stdlib.rglob("*.py")):
        if skip.search(str(path.relative_to(stdlib))):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    text = _clean(doc)
                    if len(text) > 80:
                        docs.append(text)
                        total += len(text)
        if total >= max_chars:
            break
    return docs


def with_article(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def class_phrases() -> dict[str, list[str]]:
    """Noun phrases for each class: fashion classes ('a sneaker'), digits ('a handwritten seven')."""
    return {
        "fashion": [with_article(c) for c in FASHION_MNIST_CLASSES],
        "digits": [f"a handwritten {c}" for c in DIGIT_CLASSES],
    }


def task_text() -> list[str]:
    """Short sentences with the task vocabulary: class names, captions, yes/no and 1/0 answers (none of paper A's
    probe wordings: they are held out of all training text, see :func:`probekit.organisms.tasks.probe_wordings`)."""
    lines = []
    phrases = class_phrases()
    for dom, concept in (("fashion", "a fashion item"), ("digits", "a handwritten digit")):
        for name, phrase in zip(FASHION_MNIST_CLASSES if dom == "fashion" else DIGIT_CLASSES, phrases[dom]):
            lines += [
                f"This is a photo of {phrase}. It is {concept}.",
                f"The picture shows {phrase}. The answer is {name}.",
                f"Is this {phrase}? Yes, it is {phrase}. Answer yes or no: yes.",
                f"Does the image show {concept}? Answer yes or no. The answer is no.",
                f"What is in this image? {name}. It is {phrase}, answer 1 or 0: 1.",
            ]
    return lines


def corpus_documents(source: str, max_chars: int = 1_200_000) -> list[str]:
    """The general-text part of a corpus by name (see ``CORPORA``)."""
    if source == "debian-docs":
        docs = debian_docs(max_chars)
    elif source == "python-docstrings":
        docs = python_docstrings(max_chars)
    else:
        raise ValueError(f"unknown corpus {source!r}; use one of {', '.join(CORPORA)}")
    if sum(map(len, docs)) < 100_000:
        raise RuntimeError(f"corpus {source!r} has too little text on this machine ({sum(map(len, docs))} chars)")
    return docs


def build_corpus(source: str, max_chars: int = 1_200_000, task_repeats: int = 20) -> list[str]:
    """General text of ``source`` plus the task vocabulary repeated ``task_repeats`` times."""
    return corpus_documents(source, max_chars) + task_text() * task_repeats


def corpus_stats(docs: list[str]) -> dict:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode())
        h.update(b"\x00")
    return {"documents": len(docs), "chars": sum(map(len, docs)), "sha256": h.hexdigest()}
