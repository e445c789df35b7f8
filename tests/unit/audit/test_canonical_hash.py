"""The audit hash is the documented recipe (docs/audit.md), checked against computations that do not use the code."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from google.protobuf import json_format

from libs.audit.chain import (
    CANONICAL_FIELDS,
    GENESIS,
    UNHASHED_FIELDS,
    canonical_bytes,
    entry_hash,
    legacy_entry_hash,
    seal,
    verify,
)
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2

DOC = (Path(__file__).resolve().parents[3] / "docs" / "audit.md").read_text(encoding="utf-8")
REASON = 'lines[1].unit_price: owned by procurement; "erp" may not write it\nPreisänderung abgelehnt'


def example() -> controlplane_pb2.AuditEntry:
    entry = controlplane_pb2.AuditEntry(
        sequence=1,
        actor="erp",
        action="refusal",
        object=types_pb2.ObjectRef(object_type="purchase_order", object_key="PO-4711", version=3),
        outcome="denied",
        reason=REASON,
        policy_revision=2,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        source="inbox:7f3c",
    )
    entry.recorded_at.seconds = 1767225600
    entry.recorded_at.nanos = 123456789
    return seal(entry, GENESIS)


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)\n```", DOC, flags=re.DOTALL)


def test_the_documented_example_is_the_recipe_computed_by_hand():
    # Written from the recipe in docs/audit.md, not from libs/audit: keys sorted, no spaces, UTF-8.
    by_hand = (
        '{"action":"refusal","actor":"erp","format":"syncgov.audit.entry.v1",'
        '"object":{"object_key":"PO-4711","object_type":"purchase_order","version":3},'
        '"outcome":"denied","policy_revision":2,"previous_hash":"' + "0" * 64 + '",'
        '"reason":"lines[1].unit_price: owned by procurement; \\"erp\\" may not write it\\nPreisänderung abgelehnt",'
        '"recorded_at":{"nanos":123456789,"seconds":1767225600},'
        '"source":"inbox:7f3c","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}'
    ).encode("utf-8")
    expected = hashlib.sha256(by_hand).hexdigest()
    assert expected == "f0f067623cc469df64d517ad7c0ab8d297f6e0b8e3d15d276abfe35f9ea272df"
    [canonical_line, documented_hash] = _blocks("text")
    assert canonical_line.encode("utf-8") == by_hand, "docs/audit.md shows the canonical bytes"
    assert documented_hash == expected, "docs/audit.md shows their hash"
    entry = example()
    assert canonical_bytes(entry) == by_hand
    assert entry.entry_hash == entry_hash(entry) == expected
    [exported] = _blocks("json")
    assert json.loads(exported) == json.loads(json_format.MessageToJson(entry, indent=None))


def test_the_recipe_names_every_field_of_the_entry():
    fields = {field.name for field in controlplane_pb2.AuditEntry.DESCRIPTOR.fields}
    assert fields == set(CANONICAL_FIELDS) | set(UNHASHED_FIELDS), "a new AuditEntry field needs a new hash format"
    for name in CANONICAL_FIELDS:
        assert f"| `{name}` |" in DOC


def test_absent_fields_are_written_with_their_defaults():
    empty = controlplane_pb2.AuditEntry()
    assert json.loads(canonical_bytes(empty)) == {
        "format": "syncgov.audit.entry.v1",
        "actor": "",
        "action": "",
        "object": {"object_key": "", "object_type": "", "version": 0},
        "recorded_at": {"nanos": 0, "seconds": 0},
        "outcome": "",
        "reason": "",
        "policy_revision": 0,
        "trace_id": "",
        "previous_hash": "",
        "source": "",
    }


def test_control_characters_are_escaped_as_rfc_8785_says():
    entry = controlplane_pb2.AuditEntry(reason="tab\there\x01\x1f\x7f é \\ /")
    assert b'"reason":"tab\\there\\u0001\\u001f\x7f \xc3\xa9 \\\\ /"' in canonical_bytes(entry)


def test_sequence_and_entry_hash_are_not_hashed():
    entry = example()
    moved = controlplane_pb2.AuditEntry()
    moved.CopyFrom(entry)
    moved.sequence = 99
    moved.entry_hash = "x"
    assert entry_hash(moved) == entry.entry_hash


def _chain(count: int) -> list[controlplane_pb2.AuditEntry]:
    entries, previous = [], GENESIS
    for number in range(1, count + 1):
        entry = controlplane_pb2.AuditEntry(sequence=number, actor="procurement", action="write", reason=f"#{number}")
        seal(entry, previous)
        entries.append(entry)
        previous = entry.entry_hash
    return entries


def test_entries_sealed_with_the_legacy_hash_still_verify_and_are_counted():
    entries = _chain(3)
    legacy = entries[0]
    legacy.entry_hash = legacy_entry_hash(legacy)
    for later, earlier in zip(entries[1:], entries, strict=False):
        seal(later, earlier.entry_hash)
    verdict = verify(entries)
    assert verdict.intact
    assert verdict.legacy_entries == 1
    entries[1].reason = "altered"
    broken = verify(entries)
    assert broken.first_break is not None
    assert broken.first_break.sequence == 2


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_documented_javascript_verifier_agrees(tmp_path):
    [program] = _blocks("javascript")
    (tmp_path / "verify-audit.mjs").write_text(program)
    entries = [example(), *_chain(2)]
    seal(entries[1], entries[0].entry_hash)
    seal(entries[2], entries[1].entry_hash)
    export = tmp_path / "chain.jsonl"
    export.write_text("".join(json_format.MessageToJson(e, indent=None) + "\n" for e in entries))

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["node", str(tmp_path / "verify-audit.mjs"), str(export)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    intact = run()
    assert (intact.returncode, intact.stdout.strip()) == (0, "chain intact"), intact.stderr
    entries[1].reason = "altered after the fact"
    export.write_text("".join(json_format.MessageToJson(e, indent=None) + "\n" for e in entries))
    broken = run()
    assert broken.returncode == 1
    assert "entry 2" in broken.stdout
