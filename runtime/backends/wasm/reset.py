"""Putting a used instance of a snapshot back to the snapshot's state, in place.

An instance of a snapshot (``runtime.backends.wasm.snapshot``) maps the image
copy-on-write: a page the guest only read is still the file's page (shared, in the page
cache), a page it never touched has no page at all, and only a page it *wrote* is a
private copy. So the pages a call changed are exactly the present pages that are neither
file-backed nor the shared zero page, and Linux's ``PAGEMAP_SCAN`` ioctl (6.7+) lists
them in one call over the whole memory. Dropping them with ``MADV_DONTNEED`` puts the
file's page (or zeros) back under those addresses (:meth:`PageScan.drop`: what a parked
instance does, holding no private memory), or copying a pristine instance's bytes over
them keeps them resident (:meth:`PageScan.copy`, :class:`Restorer`: what a request
instance does between calls). Either way the memory is byte for byte the snapshot's
image again, while the pages only read (the weights) stay mapped, so the next call does
not fault them in again. That is what wasmtime's pooling allocator does when it reuses
a slot; doing it here keeps the instance, its store and its sandbox.

What this does not restore, and how callers cope: a memory that grew during the call
(it cannot shrink: the instance is dropped instead), tables (C guests do not change
them), and mutable globals: :func:`resettable` accepts only a module whose one mutable
global is an ``i32`` (a C guest's stack pointer, which every call that returns leaves
as it found it); a call that trapped drops its instance.

Telling a written page from a page only read costs the scan a look at each present
page's ``struct page`` (is it a file's?): about a millisecond over MiniLM's 90 MB of
weights. :class:`Restorer` avoids it where userfaultfd's asynchronous write-protect
works (``UFFD_FEATURE_WP_ASYNC``, Linux 6.7+; :func:`write_tracker`): the instance's
memory is write-protected before its first call, a write clears a page's protection
without any handler (the kernel resolves it), and the scan then only tests a bit per
page table entry. Pages a call wrote stay unprotected from then on and are copied back
after every call (a call writes much the same pages each time), so what is tracked is
only what no call wrote before.

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

__all__ = [
    "PageScan",
    "Restorer",
    "WriteTracker",
    "base_address",
    "dirty_ranges",
    "page_scan",
    "resettable",
    "write_tracker",
]

PAGE = 4096
I32 = 0x7F  # the value type byte of i32
MADV_DONTNEED = 4
# linux/fs.h: the page categories PAGEMAP_SCAN reports.
PAGE_IS_WRITTEN = 1 << 1
PAGE_IS_FILE = 1 << 2
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_PFNZERO = 1 << 5
_REGIONS = 256  # ranges returned per ioctl; a longer list continues from walk_end
PM_SCAN_CHECK_WPASYNC = 1 << 1
# linux/userfaultfd.h
_UFFD_API = 0xAA
_UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
_UFFD_FEATURE_WP_ASYNC = 1 << 15
_UFFDIO_REGISTER_MODE_WP = 1 << 1
_UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0
_SYS_USERFAULTFD = {"x86_64": 323, "aarch64": 282}


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


class _UffdApi(ctypes.Structure):
    _fields_ = [
        ("api", ctypes.c_uint64),
        ("features", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    ]


class _UffdRange(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _UffdRegister(ctypes.Structure):
    _fields_ = [("range", _UffdRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class _UffdWriteProtect(ctypes.Structure):
    _fields_ = [("range", _UffdRange), ("mode", ctypes.c_uint64)]


def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


_UFFDIO_API = _iowr(0xAA, 0x3F, ctypes.sizeof(_UffdApi))
_UFFDIO_REGISTER = _iowr(0xAA, 0x00, ctypes.sizeof(_UffdRegister))
_UFFDIO_WRITEPROTECT = _iowr(0xAA, 0x06, ctypes.sizeof(_UffdWriteProtect))

# _IOWR('f', 16, struct pm_scan_arg)
_PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_ScanArg) << 16) | (ord("f") << 8) | 16


@dataclass
class PageScan:
    """This process's ``/proc/self/pagemap``, opened once."""

    fd: int
    libc: ctypes.CDLL

    def written(self, start: int, length: int) -> list[tuple[int, int]]:
        """The page ranges in [start, start+length) that hold private (written) pages."""
        return self._scan(
            start,
            length,
            # Written and present, and NOT the zero page nor a file's page.
            category_inverted=PAGE_IS_FILE | PAGE_IS_PFNZERO,
            category_mask=PAGE_IS_WRITTEN | PAGE_IS_PRESENT | PAGE_IS_FILE | PAGE_IS_PFNZERO,
        )

    def tracked_writes(self, start: int, length: int) -> list[tuple[int, int]]:
        """The ranges in [start, start+length) written since they were write-protected
        (memory registered with a :class:`WriteTracker`): one bit test per entry."""
        return self._scan(
            start,
            length,
            flags=PM_SCAN_CHECK_WPASYNC,
            category_mask=PAGE_IS_WRITTEN,
            return_mask=PAGE_IS_WRITTEN,
        )

    def _scan(self, start: int, length: int, **categories: int) -> list[tuple[int, int]]:
        """``PAGEMAP_SCAN`` over [start, start+length) with ``categories`` (the
        ``pm_scan_arg`` fields that choose pages), as many calls as its result vector
        needs; the ranges it reports."""
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
                **categories,
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
    global _scan, _scan_checked, _tracker, _tracker_checked
    if _scan is not None:
        os.close(_scan.fd)
    if _tracker is not None:
        os.close(_tracker.fd)
    _scan, _scan_checked = None, False
    _tracker, _tracker_checked = None, False


@dataclass
class WriteTracker:
    """A userfaultfd in asynchronous write-protect mode: memory registered with it has
    its writes recorded in the page table (read back by :meth:`PageScan.tracked_writes`)
    with no handler thread: the kernel lifts a page's protection on its first write."""

    fd: int
    libc: ctypes.CDLL

    def _ioctl(self, request: int, arg: ctypes.Structure, what: str) -> None:
        if self.libc.ioctl(self.fd, ctypes.c_ulong(request), ctypes.byref(arg)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"userfaultfd {what} failed: {os.strerror(err)}")

    def track(self, start: int, length: int) -> None:
        """Register [start, start+length) and write-protect all of it (pages never
        touched included)."""
        self._ioctl(
            _UFFDIO_REGISTER,
            _UffdRegister(_UffdRange(start, length), _UFFDIO_REGISTER_MODE_WP, 0),
            "register",
        )
        self._ioctl(
            _UFFDIO_WRITEPROTECT,
            _UffdWriteProtect(_UffdRange(start, length), _UFFDIO_WRITEPROTECT_MODE_WP),
            "write-protect",
        )


_tracker: WriteTracker | None = None
_tracker_checked = False


def write_tracker() -> WriteTracker | None:
    """The process's write tracker, or None where userfaultfd's asynchronous
    write-protect is not available (then :class:`Restorer` scans page categories)."""
    global _tracker, _tracker_checked
    scan = page_scan()
    with _scan_lock:
        if _tracker_checked:
            return _tracker
        _tracker_checked = True
        number = _SYS_USERFAULTFD.get(os.uname().machine)
        if scan is None or number is None:
            return None
        fd = scan.libc.syscall(number, os.O_CLOEXEC | os.O_NONBLOCK)
        if fd < 0:
            return None
        api = _UffdApi(_UFFD_API, _UFFD_FEATURE_WP_ASYNC | _UFFD_FEATURE_WP_UNPOPULATED, 0)
        if scan.libc.ioctl(fd, ctypes.c_ulong(_UFFDIO_API), ctypes.byref(api)) < 0:
            os.close(fd)
            return None
        _tracker = WriteTracker(fd, scan.libc)
        return _tracker


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class Restorer:
    """Puts one memory (``length`` bytes at ``target``) back to its pristine twin at
    ``source`` after each call. Create it before the memory's first call: with a
    ``tracker`` it write-protects the memory then; without one each :meth:`reset`
    scans page categories."""

    def __init__(
        self,
        scan: PageScan,
        tracker: WriteTracker | None,
        *,
        target: int,
        source: int,
        length: int,
    ) -> None:
        self.scan, self.tracker = scan, tracker
        self.target, self.source, self.length = target, source, length
        self.hot: list[tuple[int, int]] = []  # written before: unprotected, always copied
        if tracker is not None:
            tracker.track(target, length)

    def reset(self) -> int:
        """Copy back every page the calls so far may have changed; how many pages."""
        if self.tracker is not None:
            fresh = self.scan.tracked_writes(self.target, self.length)
            ranges = _merge(self.hot + fresh) if fresh else self.hot
            self.hot = ranges
        else:
            ranges = self.scan.written(self.target, self.length)
        self.scan.copy(ranges, self.source, self.target)
        return sum(hi - lo for lo, hi in ranges) // PAGE


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
