"""The schema module is the only place the record's names are spelled.

The Lua scripts get their constants generated from it (store/scripts.py); these tests fail when a
script spells a field, status, verdict or key segment as a bare string, or names a constant the
schema does not define, and when a script's answer cannot be decoded by the schema.
"""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis

from mageflow.store.keys import DONE_SEGMENT, SIG_SEGMENT, KeySchema
from mageflow.store.schema import (
    ActionKind,
    Control,
    Field,
    Kind,
    Notice,
    SignatureStatus,
    SubKey,
    Verdict,
    decode,
)
from mageflow.store.scripts import SCRIPT_NAMES, generated_prelude, script_source

TABLES = {
    "F": Field,
    "ST": SignatureStatus,
    "KIND": Kind,
    "ACT": ActionKind,
    "V": Verdict,
    "SUB": SubKey,
    "CTL": Control,
    "NOTICE": Notice,
}
SCHEMA_STRINGS = {m.value for table in TABLES.values() for m in table} | {
    SIG_SEGMENT,
    DONE_SEGMENT,
}


def lua_files() -> dict[str, str]:
    folder = resources.files("mageflow.store").joinpath("lua")
    return {p.name: p.read_text("utf-8") for p in folder.iterdir() if p.name.endswith(".lua")}


def code_lines(text: str) -> list[str]:
    return [line.split("--", 1)[0] for line in text.splitlines()]


@pytest.mark.parametrize("name", sorted(lua_files()))
def test_scripts_spell_no_schema_name_as_a_bare_string(name: str) -> None:
    for number, line in enumerate(code_lines(lua_files()[name]), 1):
        for literal in re.findall(r"'([^']*)'", line):
            assert literal not in SCHEMA_STRINGS, f"{name}:{number} spells {literal!r}"


@pytest.mark.parametrize("name", sorted(lua_files()))
def test_scripts_name_only_constants_the_schema_defines(name: str) -> None:
    for table, members in TABLES.items():
        defined = {m.name for m in members}
        for number, line in enumerate(code_lines(lua_files()[name]), 1):
            for used in re.findall(rf"\b{table}\.([A-Z_]+)\b", line):
                assert used in defined, f"{name}:{number}: {table}.{used} is not in the schema"


def test_every_script_file_is_loaded_and_every_loaded_script_exists() -> None:
    assert set(lua_files()) == {f"{n}.lua" for n in SCRIPT_NAMES} | {"lib.lua", "flow.lua"}


def test_the_generated_prelude_matches_the_schema() -> None:
    prelude = generated_prelude()
    for table, members in TABLES.items():
        for m in members:
            assert f'{m.name}="{m.value}"' in prelude, (table, m)


def test_every_script_compiles_and_answers_in_the_schema_form(sync_redis: redis.Redis) -> None:
    keys = KeySchema("mftest-schema")
    for name in SCRIPT_NAMES:
        sync_redis.script_load(script_source(name))  # a syntax error fails here
    missing = keys.signature("wf", "nothing")
    # Scripts that read a key answer V.MISSING for one that does not exist, in schema form.
    for name in ("finish", "launch", "start_container", "swarm_close", "watch", "start_task"):
        args = {"start_task": [0, 1000, "{}"], "launch": ["{}"], "start_container": ["{}", ""]}
        raw = sync_redis.eval(
            script_source(name), 7, *keys.shard(missing).indexes, missing, "1,1,1", "1,1,1", "",
            *args.get(name, ["done", "null", ""] if name == "finish" else []),
        )  # fmt: skip
        answer = decode(raw)
        assert answer.verdict in (Verdict.MISSING, Verdict.SKIP), (name, answer)
