"""`--download`: fetch MNIST / CIFAR-10 from their canonical sources and verify MD5 checksums."""

from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from cnndeploy.errors import DatasetError
from cnndeploy.fileio import atomic_path

log = logging.getLogger("cnndeploy")

# (file name, md5) and the mirrors tried in order, as torchvision lists them.
SOURCES: dict[str, dict] = {
    "mnist": {
        "subdir": "mnist",
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "http://yann.lecun.com/exdb/mnist/"],
        "files": [("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                  ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                  ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                  ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")],
    },
    "cifar10": {
        "subdir": ".",
        "mirrors": ["https://www.cs.toronto.edu/~kriz/"],
        "files": [("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
    },
}


def _fetch(url: str, dest: Path, md5: str) -> None:
    digest = hashlib.md5()
    with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(dest) as tmp, \
            open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        out.flush()
        if digest.hexdigest() != md5:
            raise DatasetError(f"{url}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5}); "
                               "the file was not kept")


def download(name: str, root: Path) -> Path:
    """Download dataset `name` into `root`; return the folder it now lives in."""
    spec = SOURCES[name]
    folder = root / spec["subdir"]
    for filename, md5 in spec["files"]:
        dest = folder / filename
        if dest.is_file():
            continue
        errors = []
        for mirror in spec["mirrors"]:
            try:
                log.info("downloading %s%s", mirror, filename)
                _fetch(mirror + filename, dest, md5)
                break
            except (urllib.error.URLError, OSError, DatasetError) as e:
                errors.append(f"{mirror}{filename}: {e}")
        else:
            raise DatasetError(f"could not download {name}: " + "; ".join(errors))
    return folder
