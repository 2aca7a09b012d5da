"""Testing your workflows: run your own client in-process, record what it dispatched, assert.

The pytest plugin (:mod:`mageflow.testing.plugin`, loaded automatically) gives the
``mageflow_client`` fixture; :class:`TestRun` is what it yields, usable without pytest too.
See docs/testing.md.
"""

from mageflow.testing.recorder import Dispatch, DispatchAssertionError, TestRun

__all__ = ["Dispatch", "DispatchAssertionError", "TestRun"]
