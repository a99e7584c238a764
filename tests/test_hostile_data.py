"""Hostile datasets, round two: bombs that add up, special files, link loops, recorded paths, unreadable roots.

Each crafted input is built here and is tiny on disk; cases that could exhaust memory run in a
child process under an address-space cap, and cases that could hang run under a timeout.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

import cnndeploy

from cnndeploy.data import dataset_for, load_dataset
from cnndeploy.data import load as data_load
from cnndeploy.errors import DatasetError
from test_data import _card, tree_members, write_image_tree
from test_reliability import MNIST_META, cli, memory_capped, tiny_run

SRC = str(Path(cnndeploy.__file__).resolve().parents[1])   # the package under test, for child processes
BIG_SIDE = 4096                       # at the pixel cap: each such image is allowed on its own


def _zip(dest: Path, members: dict[str, tuple[bytes, int, int]]) -> Path:
    """A zip built by hand from raw deflate streams: name -> (deflated, crc32, declared size).

    One compressed image can then be stored many times without compressing it again, and a
    member can declare a size other than what it inflates to."""
    body, central = b"", b""
    for name, (data, crc, size) in members.items():
        n = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size,
                               len(n), 0, 0, 0, 0, 0, len(body)) + n
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(n), 0) + n + data
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    dest.write_bytes(body + central + eocd)
    return dest


def _deflated(raw: bytes, declared: int | None = None) -> tuple[bytes, int, int]:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush(), zlib.crc32(raw), len(raw) if declared is None else declared


def _big_image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (BIG_SIDE, BIG_SIDE)).save(buf, fmt)
    return buf.getvalue()


def _capped(argv: list[str], extra_mb: int = 768, timeout: float = 120) -> subprocess.CompletedProcess:
    """`cnndeploy ARGV` in a child whose address space may grow by `extra_mb` only (torch is
    imported first, so the cap is on what the command allocates)."""
    code = ("import cnndeploy.cli\n" + memory_capped(extra_mb) +
            "sys.exit(cnndeploy.cli.main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.stdout.splitlines()[:1] == ["LIMIT OK"], proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------- totals of a split

def test_zip_whose_members_add_up_to_gigabytes_is_refused_before_reading(tmp_path):
    """100 BMPs of 4096x4096 zeros: each 16 MB (under the 50 MB file cap), 1.6 GB in all, 1.6 MB on disk."""
    bmp = _deflated(_big_image("BMP"))
    members = {f"{split}/{cls}/{i:03d}.bmp": bmp for split, n in (("train", 40), ("test", 10))
               for cls in ("a", "b") for i in range(n)}
    bomb = _zip(tmp_path / "bomb.zip", members)
    assert bomb.stat().st_size < 3 << 20
    proc = _capped(["train", "--model", "lenet5", "--dataset", str(bomb), "--out", str(tmp_path / "run")])
    _one_line_exit_2(proc, str(bomb), "add up to 1600 MB", "1024 MB allowed", "CNNDEPLOY_MAX_DATASET_MB")
    assert not (tmp_path / "run").exists()


def test_folder_of_images_at_the_pixel_cap_is_refused_before_decoding(tmp_path):
    """140 PNGs of 4096x4096 (16 kB each, 2.3 MB in all) would decode to 2.3 GB."""
    png = _big_image("PNG")
    for split, n in (("train", 60), ("test", 10)):
        for cls in ("a", "b"):
            (tmp_path / "big" / split / cls).mkdir(parents=True)
            for i in range(n):
                (tmp_path / "big" / split / cls / f"{i:03d}.png").write_bytes(png)
    assert sum(p.stat().st_size for p in (tmp_path / "big").rglob("*.png")) < 4 << 20
    proc = _capped(["train", "--model", "lenet5", "--dataset", str(tmp_path / "big"),
                    "--out", str(tmp_path / "run")])
    _one_line_exit_2(proc, "its 140 images decode to 2240 MB", "1024 MB allowed", "CNNDEPLOY_MAX_DATASET_MB")


def test_the_limit_can_be_raised_lowered_and_must_be_a_number(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "pets")
    # 8x8 images resized to 4096x4096 would make arrays of 10 x 3 x 4096 x 4096 bytes
    monkeypatch.setenv("CNNDEPLOY_MAX_DATASET_MB", "64")
    with pytest.raises(DatasetError, match=r"its 10 images make arrays of 480 MB, more than the 64 MB .* "
                                           r"smaller image size"):
        load_dataset(str(tmp_path / "pets"), image_size=4096, use_cache=False)
    monkeypatch.setenv("CNNDEPLOY_MAX_DATASET_MB", "lots")
    with pytest.raises(DatasetError, match=r"\$CNNDEPLOY_MAX_DATASET_MB='lots': expected a positive whole"):
        load_dataset(str(tmp_path / "pets"), use_cache=False)
    monkeypatch.setenv("CNNDEPLOY_MAX_DATASET_MB", "1")
    assert len(load_dataset(str(tmp_path / "pets"), use_cache=False).train_y) == 6
    monkeypatch.setenv("CNNDEPLOY_MAX_DATASET_FILES", "5")
    with pytest.raises(DatasetError, match="more than 5 entries.*CNNDEPLOY_MAX_DATASET_FILES"):
        load_dataset(str(tmp_path / "pets"), use_cache=False)


def test_archive_members_that_lie_about_their_size_are_read_only_to_the_declared_size(tmp_path):
    """A member declares 60 bytes and inflates to 16 MB; a tar member header claims 2 GB."""
    write_image_tree(tmp_path / "src")
    members = {k: _deflated(v) for k, v in tree_members(tmp_path / "src").items()}
    members["train/cat/liar.bmp"] = _deflated(_big_image("BMP"), declared=60)
    with pytest.raises(DatasetError, match=r"liar.zip: cannot read \(Bad CRC-32"):
        load_dataset(str(_zip(tmp_path / "liar.zip", members)), use_cache=False)
    claim = tarfile.TarInfo("train/cat/huge.png")
    claim.size = 2 << 30
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.addfile(claim)          # the header only: the 2 GB it promises never follow
    (tmp_path / "claim.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match=r"its members add up to more than 1024 MB once inflated; raise CNNDEPLOY_MAX_DATASET_MB"):
        load_dataset(str(tmp_path / "claim.tar.gz"), use_cache=False)


# ---------------------------------------------------------------- special files and links

_SPECIAL = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format='%(message)s')
from cnndeploy.data import load_dataset
ds = load_dataset(sys.argv[1])
print('LOADED', len(ds.train_y), len(ds.test_y))
"""


def test_devices_and_fifos_are_never_opened(tmp_path):
    root = tmp_path / "pets"
    write_image_tree(root)
    (root / "train" / "cat" / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(root / "train" / "dog" / "x.png")
    os.mkfifo(root / "test" / "bird")   # a FIFO where a class folder belongs
    code = memory_capped(512) + _SPECIAL
    env = {**os.environ, "PYTHONPATH": SRC}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["LIMIT OK", "LOADED 6 4"], proc.stdout + proc.stderr
    assert "skipped 3 file(s): not a regular file (a device, FIFO or socket)" in proc.stderr
    assert time.monotonic() - start < 30


def test_a_fifo_swapped_in_after_the_walk_is_not_read(tmp_path):
    from cnndeploy.data.walk import Unusable, read_regular

    os.mkfifo(tmp_path / "x.png")
    with pytest.raises(Unusable, match="not a regular file"):   # returns at once: O_NONBLOCK, then fstat
        read_regular(tmp_path / "x.png", 1 << 20)
    with pytest.raises(Unusable, match="not a regular file"):
        read_regular(Path("/dev/zero"), 1 << 20)
    (tmp_path / "big.png").write_bytes(b"\0" * 2048)
    with pytest.raises(Unusable, match="larger than"):
        read_regular(tmp_path / "big.png", 1024)


def test_link_loops_and_dangling_links_are_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "pets"
    write_image_tree(root)
    cat = root / "train" / "cat"
    (cat / "up").symlink_to("..")                        # a folder loop: train/cat/up/cat/up/...
    (cat / "self.png").symlink_to("self.png")            # a file link loop (ELOOP)
    (cat / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "train" / "ghost").symlink_to(tmp_path / "no-such-folder")   # a dangling class folder
    (root / "test" / "dog" / "again").symlink_to(root / "test" / "dog")
    (root / "elsewhere").mkdir()
    with caplog.at_level(logging.WARNING, logger="cnndeploy"):
        ds = load_dataset(str(root))                     # the cache's fingerprint walks it too
    assert ds.classes == ["cat", "dog"] and len(ds.train_y) == 6 and len(ds.test_y) == 4
    assert "skipped 3 file(s): a broken link or a link loop" in caplog.text
    assert "skipped 2 file(s): a link to a folder already walked (a loop)" in caplog.text


def test_a_symlinked_class_folder_still_loads(tmp_path):
    write_image_tree(tmp_path / "store")
    root = tmp_path / "pets"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for cls in ("cat", "dog"):
            (root / split / cls).symlink_to(tmp_path / "store" / split / cls)
    ds = load_dataset(str(root), use_cache=False)
    assert ds.classes == ["cat", "dog"] and len(ds.train_y) == 6


# ---------------------------------------------------------------- what counts as a dataset

def test_a_folder_that_is_not_a_dataset_is_refused_before_walking(tmp_path, monkeypatch):
    import cnndeploy.data.walk as walk

    def no_walk(*args, **kwargs):
        raise AssertionError("walked a folder that is not a dataset")
    monkeypatch.setattr(walk, "walk", no_walk)
    monkeypatch.setattr("cnndeploy.data.folder.walk", no_walk)
    monkeypatch.setattr("cnndeploy.data.cache.walk", no_walk)
    start = time.monotonic()
    with pytest.raises(DatasetError, match=r"^/ is not a dataset: expected train/<class>/\* and test/<class>/\*$"):
        load_dataset("/")
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("layout", ["top", "wrapped"])
def test_split_folders_at_the_top_or_one_folder_below(tmp_path, layout):
    root = tmp_path / "pets"
    write_image_tree(root / "pets" if layout == "wrapped" else root)
    (root / "notes").mkdir()
    archive = tmp_path / "pets.zip"
    _zip(archive, {k: _deflated(v) for k, v in tree_members(root).items()})
    for source in (root, archive):
        ds = load_dataset(str(source), use_cache=False)
        assert ds.classes == ["cat", "dog"] and len(ds.train_y) == 6 and len(ds.test_y) == 4


def test_splits_deeper_than_one_wrapper_are_not_looked_for(tmp_path):
    write_image_tree(tmp_path / "a" / "b" / "c")
    archive = _zip(tmp_path / "deep.zip", {k: _deflated(v) for k, v in tree_members(tmp_path / "a").items()})
    with pytest.raises(DatasetError, match="is not a dataset"):
        load_dataset(str(tmp_path / "a"), use_cache=False)
    with pytest.raises(DatasetError, match="no 'train/<class>/' folders found"):
        load_dataset(str(archive), use_cache=False)


def _pets_run(root: Path, dataset_path: str) -> Path:
    """A run directory whose model.json says it was trained on an image folder at `dataset_path`."""
    return tiny_run(root, dataset="pets", dataset_source="image-folder", dataset_path=dataset_path)


def test_recorded_dataset_path_at_the_root_is_refused_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data_load, "_announced", set())
    run = _pets_run(tmp_path, "/")
    start = time.monotonic()
    code, err = cli(capsys, "eval", str(run))
    assert code == 2 and "/ is not a dataset: expected train/<class>/* and test/<class>/*" in err
    assert "dataset_path recorded in model.json" in err and "--dataset PATH" in err
    assert time.monotonic() - start < 5


def test_recorded_dataset_path_at_an_archive_bomb_gets_the_same_caps(tmp_path):
    bmp = _deflated(_big_image("BMP"))
    bomb = _zip(tmp_path / "bomb.zip", {f"{s}/{c}/{i:03d}.bmp": bmp for s in ("train", "test")
                                        for c in MNIST_META["classes"] for i in range(7)})
    run = _pets_run(tmp_path, str(bomb))
    _one_line_exit_2(_capped(["eval", str(run)]), "add up to 2240 MB", "CNNDEPLOY_MAX_DATASET_MB",
                     "dataset_path recorded in model.json")


def test_recorded_path_of_a_named_dataset_that_is_not_one_is_listed(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNDEPLOY_DATA", raising=False)
    monkeypatch.setenv("CNNDEPLOY_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="recorded in model.json: /;"):
        dataset_for(_card("mnist", Path("/")))


# ---------------------------------------------------------------- data roots that cannot be read

def _deny_under(monkeypatch, folder: Path) -> None:
    """Permission denied for everything inside `folder` (the tests run as root, which chmod cannot stop)."""
    real_stat, real_scandir = os.stat, os.scandir

    def denied(path) -> bool:
        p = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
        return p.startswith(str(folder) + os.sep)

    def stat(path, *args, **kwargs):
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    def scandir(path="."):
        if denied(path) or os.fspath(path) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_cnndeploy_data_that_cannot_be_read_is_one_line(name, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    monkeypatch.setenv("CNNDEPLOY_DATA", str(data))
    _deny_under(monkeypatch, data)
    code, err = cli(capsys, "train", "--model", "lenet5", "--dataset", name, "--out", str(tmp_path / "run"),
                    "--epochs", "1")
    assert code == 2 and f"$CNNDEPLOY_DATA: {data}: cannot be read (Permission denied)" in err
    assert not (tmp_path / "run").exists()


def test_an_image_folder_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    write_image_tree(tmp_path / "pets")
    _deny_under(monkeypatch, tmp_path / "pets")
    with pytest.raises(DatasetError, match=r"pets: cannot read \(Permission denied\)"):
        load_dataset(str(tmp_path / "pets"))


@pytest.mark.parametrize("member,size,expected", [
    ("junk.bin", 2 << 30, "its members add up to more than 512 MB once inflated"),
    ("cifar-10-batches-py/data_batch_1", 100 << 20, "declares 104,857,600 bytes, more than a CIFAR-10 batch"),
])
def test_cifar_archive_claims_are_bounded_before_inflating(member, size, expected, tmp_path):
    claim = tarfile.TarInfo(member)
    claim.size = size
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as t:
        t.addfile(claim)          # the header only: what it promises never follows
    with pytest.raises(DatasetError, match=expected):
        load_dataset("cifar10", data_dir=tmp_path, use_cache=False)
