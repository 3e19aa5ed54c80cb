"""docs/protocol.md names everything the core's wire package defines, so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megapresence_core import CloseCode
from megapresence_core.wire import CLIENT_ERROR_CODES, COMMAND_OPS, SERVER_MESSAGE_TYPES
from megapresence_core.wire._codec import _BY_TYPE

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


def _section(title: str) -> str:
    """The text under the ``### `title` `` heading, up to the next heading."""
    match = re.search(rf"^### `{re.escape(title)}`\n(.*?)(?=^##)", DOC, re.M | re.S)
    assert match, f"docs/protocol.md has no section ### `{title}`"
    return match.group(1)


def _wire_fields(name: str, tag: str) -> list[str]:
    [schema] = [s for s in _BY_TYPE.values() if s.name == name and s.dialect.tag == tag]
    return [field.wire for field in schema.fields if field.wire != tag]


@pytest.mark.parametrize(
    ("name", "tag"),
    [*((op, "op") for op in COMMAND_OPS), *((kind, "type") for kind in SERVER_MESSAGE_TYPES)],
)
def test_every_command_and_message_has_a_section_naming_its_fields_with_an_example(
    name: str, tag: str
) -> None:
    section = _section(name)
    for field in _wire_fields(name, tag):
        assert f"`{field}`" in section, f"{name}: field {field} is not described"
    assert f'"{tag}": "{name}"' in section, f"{name}: no example"


@pytest.mark.parametrize("code", CLIENT_ERROR_CODES)
def test_every_error_code_has_a_row(code: str) -> None:
    assert re.search(rf"^\| `{code}` \|", DOC, re.M), f"error code {code} has no row"


@pytest.mark.parametrize("code", [int(code) for code in CloseCode])
def test_every_close_code_has_a_row(code: int) -> None:
    assert re.search(rf"^\| {code} \|", DOC, re.M), f"close code {code} has no row"
