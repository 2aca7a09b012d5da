"""Tests against a Redis Cluster: a harness that starts one on loopback, and its fixtures."""

import sys
from pathlib import Path

# The cluster harness reuses ``faults.harness.RedisServer``; that module imports its siblings
# (``faults_brokers``) as top-level modules, as pytest allows when it collects tests/faults.
# Make them importable the same way when only this package is collected.
_FAULTS = str(Path(__file__).resolve().parents[1] / "faults")
if _FAULTS not in sys.path:
    sys.path.append(_FAULTS)
