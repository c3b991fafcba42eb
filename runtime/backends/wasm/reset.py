"""Putting a used instance of a snapshot back to the snapshot's state, in place.

An instance of a snapshot (``runtime.backends.wasm.snapshot``) maps the image
copy-on-write: a page the guest only read is still the file's page (shared, in the page
cache), a page it never touched has no page at all, and only a page it *wrote* is a
private copy. So the pages a call changed are exactly the present pages that are neither
file-backed nor the shared zero page, and Linux's ``PAGEMAP_SCAN`` ioctl (6.7+) lists
them in one call over the whole memory. Dropping them with ``MADV_DONTNEED`` puts the
file's page (or zeros) back under those addresses: the memory is then byte for byte the
snapshot's image again, while the pages only read (the weights) stay mapped, so the next
call does not fault them in again. That is what wasmtime's pooling allocator does when
it reuses a slot; doing it here keeps the instance, its store and its sandbox.

What this does not restore, and how callers cope: a memory that grew during the call
(it cannot shrink: the instance is dropped instead), tables (C guests do not change
them), and mutable globals: :func:`resettable` accepts only a module whose one mutable
global is an ``i32`` (a C guest's stack pointer, which every call that returns leaves
as it found it); a call that trapped drops its instance.

Where the scan is not supported (not Linux, an older kernel, no ``/proc``),
:func:`page_scan` is None and callers make a fresh instance per call instead.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import wasmtime

__all__ = ["PageScan", "base_address", "dirty_ranges", "page_scan", "resettable"]

PAGE = 4096
I32 = 0x7F  # the value type byte of i32
MADV_DONTNEED = 4
# linux/fs.h: the page categories PAGEMAP_SCAN reports.
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_PFNZERO = 1 << 5
_REGIONS = 256  # ranges returned per ioctl; a longer list continues from walk_end


class _ScanArg(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size",
            "flags",
            "start",
            "end",
            "walk_end",
            "vec",
            "vec_len",
            "max_pages",
            "category_inverted",
            "category_mask",
            "category_anyof_mask",
            "return_mask",
        )
    ]


class _Region(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("categories", ctypes.c_uint64),
    ]


# _IOWR('f', 16, struct pm_scan_arg)
_PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_ScanArg) << 16) | (ord("f") << 8) | 16


@dataclass
class PageScan:
    """This process's ``/proc/self/pagemap``, opened once."""

    fd: int
    libc: ctypes.CDLL

    def written(self, start: int, length: int) -> list[tuple[int, int]]:
        """The page ranges in [start, start+length) that hold private (written) pages."""
        out: list[tuple[int, int]] = []
        regions = (_Region * _REGIONS)()
        end = start + length
        while start < end:
            arg = _ScanArg(
                size=ctypes.sizeof(_ScanArg),
                start=start,
                end=end,
                vec=ctypes.addressof(regions),
                vec_len=_REGIONS,
                # Written and present, and NOT the zero page nor a file's page.
                category_inverted=PAGE_IS_FILE | PAGE_IS_PFNZERO,
                category_mask=PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_FILE | PAGE_IS_PFNZERO,
            )
            n = self.libc.ioctl(self.fd, ctypes.c_ulong(_PAGEMAP_SCAN), ctypes.byref(arg))
            if n < 0:
                err = ctypes.get_errno()
                raise OSError(err, f"PAGEMAP_SCAN failed: {os.strerror(err)}")
            out.extend((regions[i].start, regions[i].end) for i in range(n))
            if arg.walk_end <= start:  # no progress: never loop forever
                raise OSError("PAGEMAP_SCAN made no progress")
            start = arg.walk_end
        return out

    def copy(self, ranges: list[tuple[int, int]], source: int, target: int) -> None:
        """Copy each range from the pristine memory at ``source`` (mapped at the same
        offsets as ``target``'s): the pages stay resident, so the next call does not
        fault them in again; only their contents go back."""
        for lo, hi in ranges:
            ctypes.memmove(lo, source + (lo - target), hi - lo)

    def drop(self, ranges: list[tuple[int, int]]) -> None:
        """``MADV_DONTNEED`` each range: the mapping's original contents come back."""
        for lo, hi in ranges:
            if self.libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), MADV_DONTNEED):
                err = ctypes.get_errno()
                raise OSError(err, f"madvise(MADV_DONTNEED) failed: {os.strerror(err)}")


_scan: PageScan | None = None
_scan_checked = False
_scan_lock = threading.Lock()


def page_scan() -> PageScan | None:
    """The process's page scanner, or None where ``PAGEMAP_SCAN`` is not supported."""
    global _scan, _scan_checked
    with _scan_lock:
        if _scan_checked:
            return _scan
        _scan_checked = True
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        scan = PageScan(fd, libc)
        probe = ctypes.create_string_buffer(PAGE * 2)
        try:
            scan.written(ctypes.addressof(probe) & ~(PAGE - 1), PAGE)
        except OSError:
            os.close(fd)
            return None
        # A fork (the worker's fork server) would share this descriptor, which names
        # the parent's pages: the child opens its own.
        os.register_at_fork(after_in_child=_forget_after_fork)
        _scan = scan
        return _scan


def _forget_after_fork() -> None:
    global _scan, _scan_checked
    if _scan is not None:
        os.close(_scan.fd)
    _scan, _scan_checked = None, False


def base_address(memory: wasmtime.Memory, store: wasmtime.Store) -> int:
    """Where ``memory``'s bytes start in this process."""
    return ctypes.cast(memory.data_ptr(store), ctypes.c_void_p).value or 0


def dirty_ranges(
    scan: PageScan, memory: wasmtime.Memory, store: wasmtime.Store
) -> list[tuple[int, int]]:
    """The written page ranges of ``memory``."""
    return scan.written(base_address(memory, store), memory.data_len(store))


def resettable(mutable_globals: Sequence[int]) -> bool:
    """Whether an instance of a module whose mutable globals have these value types
    can be reset in place: at most one, an ``i32`` (a C guest's stack pointer)."""
    return len(mutable_globals) <= 1 and all(t == I32 for t in mutable_globals)
