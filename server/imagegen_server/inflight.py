"""The memory bound: request bytes held by calls in flight, across all calls, and per-method size limits.

A request's bytes are counted from the moment gRPC hands them over (before
they are decoded) until its call ends; the server holds several copies of an
input image while it works on it (the decoded message, base64 for Gemini's
JSON, the JSON body), so its memory grows with this number. Past the bound a
call is refused at once with RESOURCE_EXHAUSTED instead of being decoded.
"""

from __future__ import annotations

import os

#: Request size limit of the methods that take no images (ListModels, health, reflection).
SMALL_REQUEST_BYTES = 64 * 1024
#: The default bound never exceeds this, whatever the machine.
_DEFAULT_CAP = 1024 * 1024 * 1024
#: Where a container's memory limit is (cgroup v2, v1); "max" or a huge number means none.
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def default_bound(max_message_bytes: int) -> int:
    """The default bound: 1/64 of the memory this process may use, at most 1 GiB, at least one largest message.

    The memory is the machine's, or the container's limit (cgroup) when that is lower. Each admitted
    byte costs about six in the server's memory while the call runs (see the README's "Security").
    """
    return max(max_message_bytes, min(usable_memory() // 64, _DEFAULT_CAP))


def usable_memory() -> int:
    """Physical memory, or the cgroup (v2 or v1) memory limit when lower."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        memory = 16 * _DEFAULT_CAP
    for limit_file in _CGROUP_LIMITS:
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            memory = min(memory, int(text))
    return memory


class RequestBytes:
    """Bytes of requests in flight, bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def try_reserve(self, size: int) -> bool:
        """Count ``size`` more bytes if they fit under the bound; False (nothing counted) if not."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        """Give back bytes counted by :meth:`try_reserve`."""
        self.held = max(0, self.held - size)
