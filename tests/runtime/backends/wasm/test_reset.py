"""The page scan that resets an instance in place (runtime.backends.wasm.reset), on plain
mappings of this process: a copy-on-write file mapping, as a snapshot's image is."""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.backends.wasm.reset import (
    PAGE,
    PageScan,
    Restorer,
    page_scan,
    resettable,
    write_tracker,
)


@pytest.fixture
def scan() -> PageScan:
    found = page_scan()
    if found is None:
        pytest.skip("PAGEMAP_SCAN is not supported on this kernel")
    return found


@pytest.fixture
def image(tmp_path: Path) -> Iterator[tuple[mmap.mmap, int, bytes]]:
    data = bytes(range(256)) * (PAGE * 8 // 256)
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    with path.open("rb") as f:
        mapping = mmap.mmap(f.fileno(), len(data), flags=mmap.MAP_PRIVATE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mapping))
    yield mapping, base, data
    # ctypes keeps an export of the buffer; the mapping goes with the process


def test_pages_only_read_are_clean_and_written_ones_are_found(
    scan: PageScan, image: tuple[mmap.mmap, int, bytes]
) -> None:
    mapping, base, data = image
    assert mapping[: len(data)] == data  # every page read: the file's pages, shared
    assert scan.written(base, len(data)) == []
    mapping[PAGE * 2 + 5] = 0xAA
    mapping[PAGE * 6] = 0xBB
    assert scan.written(base, len(data)) == [
        (base + PAGE * 2, base + PAGE * 3),
        (base + PAGE * 6, base + PAGE * 7),
    ]


def test_dropping_the_written_pages_brings_the_image_back(
    scan: PageScan, image: tuple[mmap.mmap, int, bytes]
) -> None:
    mapping, base, data = image
    mapping[PAGE * 3 : PAGE * 3 + 4] = b"gone"
    scan.drop(scan.written(base, len(data)))
    assert mapping[: len(data)] == data
    assert scan.written(base, len(data)) == []


def test_copying_from_a_pristine_mapping_restores_and_keeps_the_pages(
    scan: PageScan, image: tuple[mmap.mmap, int, bytes], tmp_path: Path
) -> None:
    mapping, base, data = image
    with (tmp_path / "image.bin").open("rb") as f:
        pristine = mmap.mmap(f.fileno(), len(data), flags=mmap.MAP_PRIVATE)
    source = ctypes.addressof(ctypes.c_char.from_buffer(pristine))
    mapping[PAGE : PAGE + 3] = b"new"
    ranges = scan.written(base, len(data))
    scan.copy(ranges, source, base)
    assert mapping[: len(data)] == data
    assert scan.written(base, len(data)) == ranges  # still private, resident: no refault


@pytest.mark.parametrize(
    ("globals_", "ok"),
    [((), True), ((0x7F,), True), ((0x7F, 0x7F), False), ((0x7E,), False)],
)
def test_only_a_lone_i32_global_is_reset_safe(globals_: tuple[int, ...], ok: bool) -> None:
    assert resettable(globals_) is ok


@pytest.mark.parametrize("tracked", [True, False], ids=["write-protect", "page-categories"])
def test_a_restorer_puts_a_memory_back_after_each_call(
    scan: PageScan, image: tuple[mmap.mmap, int, bytes], tmp_path: Path, tracked: bool
) -> None:
    mapping, base, data = image
    tracker = write_tracker() if tracked else None
    if tracked and tracker is None:
        pytest.skip("userfaultfd's asynchronous write-protect is not available")
    with (tmp_path / "image.bin").open("rb") as f:
        pristine = mmap.mmap(f.fileno(), len(data), flags=mmap.MAP_PRIVATE)
    source = ctypes.addressof(ctypes.c_char.from_buffer(pristine))
    restorer = Restorer(scan, tracker, target=base, source=source, length=len(data))
    assert restorer.reset() == 0  # nothing written yet
    mapping[PAGE * 4 : PAGE * 4 + 2] = b"c1"  # "call 1"
    assert restorer.reset() == 1 and mapping[: len(data)] == data
    mapping[PAGE * 1] = 0x01  # "call 2" writes another page
    mapping[PAGE * 4] = 0x02  # and the one call 1 wrote, unprotected since
    restored = restorer.reset()
    assert mapping[: len(data)] == data
    assert restored == 2
    # A page written once is copied back after every call from then on (tracked: it is
    # no longer write-protected; scanned: it stays a private page), none other.
    assert restorer.reset() == 2 and mapping[: len(data)] == data
