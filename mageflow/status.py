"""Signature statuses."""

from __future__ import annotations

from enum import StrEnum


class SignatureStatus(StrEnum):
    """Where a signature (task, chain or swarm) is in its life. Stored as the plain string."""

    PENDING = "pending"  # created, not started (or queued in a swarm waiting for a slot)
    ACTIVE = "active"  # started on a worker, or a container with work in flight
    SUSPENDED = "suspended"  # paused before starting; resume() dispatches it again
    INTERRUPTED = "interrupted"  # stopped while running; resume() runs it again
    CANCELED = "canceled"  # stopped for good; terminal
    DONE = "done"  # finished with a result; terminal
    FAILED = "failed"  # finished with an error after its last retry; terminal

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({SignatureStatus.CANCELED, SignatureStatus.DONE, SignatureStatus.FAILED})
