"""The pytest plugin (registered through the ``pytest11`` entry point: installing mageflow is
enough): the ``mageflow_client`` fixture runs your own client in-process for one test.

Which client: ``@pytest.mark.mageflow(client="myapp.tasks:mf")`` on the test, its class or its
module (``pytestmark``), else ``client = "myapp.tasks:mf"`` under ``[tool.mageflow.testing]`` in
the ``pyproject.toml`` of the pytest root. ``execute=False`` (marker keyword or the same table)
records dispatches and runs nothing.

Which Redis: ``$REDIS_URL`` (each test in a fresh namespace, deleted afterwards), else a private
``redis-server`` started once for the session in a temporary folder and stopped at its end.

The fixture is an async one, run by pytest-asyncio (``pip install "mageflow[testing]"``).
"""

from __future__ import annotations

import importlib
import os
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from mageflow.errors import ConfigurationError
from mageflow.testing.recorder import TestRun

MARKER = "mageflow"
SETTINGS_TABLE = ("tool", "mageflow", "testing")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f'{MARKER}(client="module:attr", execute=True): the Mageflow client the '
        "mageflow_client fixture runs in-process; execute=False records dispatches only",
    )


def _settings(config: pytest.Config) -> dict[str, Any]:
    path = Path(config.rootpath) / "pyproject.toml"
    if not path.is_file():
        return {}
    table: Any = tomllib.loads(path.read_text("utf-8"))
    for part in SETTINGS_TABLE:
        table = table.get(part, {}) if isinstance(table, dict) else {}
    return dict(table) if isinstance(table, dict) else {}


def _choice(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(client path, execute) from the closest marker, then pyproject.toml."""
    settings = _settings(request.config)
    marker = request.node.get_closest_marker(MARKER)
    given: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        given.setdefault("client", marker.args[0])
    path = given.get("client", settings.get("client"))
    if not path:
        raise ConfigurationError(
            'mageflow_client needs your client: @pytest.mark.mageflow(client="myapp.tasks:mf") '
            'or client = "myapp.tasks:mf" under [tool.mageflow.testing] in pyproject.toml'
        )
    return str(path), bool(given.get("execute", settings.get("execute", True)))


def load_client(path: str, rootdir: Path) -> Any:
    """The Mageflow client named ``"module:attribute"`` (the pytest root is importable)."""
    from mageflow.client import Mageflow

    module_name, sep, attr = path.partition(":")
    if not (sep and module_name and attr):
        raise ConfigurationError(f"expected module:attribute, like myapp.tasks:mf, not {path!r}")
    if str(rootdir) not in sys.path:
        sys.path.insert(0, str(rootdir))
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Mageflow):
        raise ConfigurationError(f"{path} is a {type(obj).__name__}, not a Mageflow client")
    return obj


@pytest.fixture(scope="session")
def mageflow_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``$REDIS_URL``, else a private redis-server for the session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from mageflow.store.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("mageflow-redis"), appendonly=False)
    yield server.start()
    server.stop()


@pytest_asyncio.fixture
async def mageflow_client(
    request: pytest.FixtureRequest, mageflow_redis_url: str
) -> AsyncIterator[TestRun]:
    """Your client, run in-process on a fresh namespace for this test, recording dispatches."""
    path, execute = _choice(request)
    client = load_client(path, Path(request.config.rootpath))
    run = TestRun(client, mageflow_redis_url, execute=execute)
    await run.start()
    try:
        yield run
    finally:
        await run.stop()
