"""Signature statuses (defined with the rest of the record schema in ``store/schema.py``)."""

from __future__ import annotations

from mageflow.store.schema import TERMINAL, SignatureStatus

__all__ = ["TERMINAL", "SignatureStatus"]
