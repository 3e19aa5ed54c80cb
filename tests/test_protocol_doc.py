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


def _reserved_in_doc() -> tuple[frozenset[str], tuple[str, ...]]:
    """The types and type prefixes docs/protocol.md's **Reserved types.** keeps for the
    server."""
    match = re.search(r"^\*\*Reserved types\.\*\*(.*?)\n\n", DOC, re.M | re.S)
    assert match, "docs/protocol.md has no **Reserved types.** paragraph"
    _, _, listed = match.group(1).partition("one of the server's:")
    types, _, prefixes = listed.partition(" (kept")[0].partition("or any type starting with")
    return frozenset(re.findall(r"`([^`]+)`", types)), tuple(re.findall(r"`([^`]+)`", prefixes))


def test_the_reserved_types_are_the_docs_in_the_core_and_the_python_client() -> None:
    import megapresence_client._client as client
    from megapresence_core.wire import RESERVED_PREFIXES, RESERVED_TYPES

    assert _reserved_in_doc() == (RESERVED_TYPES, RESERVED_PREFIXES)
    assert _reserved_in_doc() == (client.RESERVED_TYPES, client.RESERVED_PREFIXES)
    # What the Python client takes as the server's is reserved: no peer can fake it.
    assert all(client.is_reserved(kind) for kind in client._HANDLERS)


def test_what_the_javascript_client_takes_from_the_server_is_reserved() -> None:
    from importlib.resources import files

    source = files("megapresence_anyio").joinpath("static/megapresence.js").read_text()
    presence_types = re.search(r"const PRESENCE_TYPES = new Set\(\[(.*?)\]\)", source, re.S)
    assert presence_types
    taken = {
        *re.findall(r'message\.type === "([^"]+)"', source),
        *re.findall(r'^\s*case "([^"]+)":', source, re.M),
        *re.findall(r'"([^"]+)"', presence_types.group(1)),
    }
    types, prefixes = _reserved_in_doc()
    assert len(taken) > 8  # the patterns still find them
    assert {kind for kind in taken if kind not in types and not kind.startswith(prefixes)} == set()


def test_both_clients_ask_again_after_the_refusals_the_doc_says_are_for_now() -> None:
    from importlib.resources import files

    import megapresence_client._client as client

    source = files("megapresence_anyio").joinpath("static/megapresence.js").read_text()

    def js_set(name: str) -> set[str]:
        found = re.search(rf"const {name} = new Set\(\[(.*?)\]\)", source, re.S)
        assert found, name
        return set(re.findall(r'"([^"]+)"', found.group(1)))

    listed = re.search(r"((?:`\w+`(?:, | and ))+`\w+`) refuse it for now", DOC)
    assert listed, "docs/protocol.md's subscribe says no refusal is for now"
    for_now = set(re.findall(r"`(\w+)`", listed.group(1)))
    assert js_set("SUBSCRIBE_RETRIES") == set(client.SUBSCRIBE_RETRIES) == for_now
    assert js_set("SUBSCRIBE_REFUSALS") == set(client.SUBSCRIBE_REFUSALS)
    assert not for_now & client.SUBSCRIBE_REFUSALS
