"""Raise the open-file soft limit to what the daemon may hold (part of the composition root).

The block cache keeps up to ``store.cache_segments.FILES_LIMIT`` (1,024) segment files open,
beside its index, the API and peer connections (``peers.upload_limit`` of them and more) and
discovery sockets. A systemd service starts with a soft limit of 1,024 (and a hard one of
524,288): left there, a busy node would meet EMFILE. As systemd recommends for programs that
need more, the soft limit is raised to the hard one, at most :data:`WANTED`.
"""

from __future__ import annotations

import logging
import resource
from typing import Final

log = logging.getLogger(__name__)

WANTED: Final = 65536


def raise_file_limit(wanted: int = WANTED) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted`` (never past the hard limit, never
    lower); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft
        return target
    return soft
