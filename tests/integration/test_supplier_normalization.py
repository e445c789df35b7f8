"""supplier-normalization through gRPC, the runtime and a real JetStream stream."""

from __future__ import annotations

import grpc
import pytest

from libs.runtime.testing import running_service
from services.supplier_normalization.wiring import wire
from syncgov.common.v1 import types_pb2
from syncgov.exception.v1 import exception_pb2
from syncgov.supplier.v1 import supplier_pb2, supplier_service_pb2, supplier_service_pb2_grpc
from tests.integration.helpers import raised_exceptions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]
pb = supplier_service_pb2


def as_system(system: str) -> tuple[tuple[str, str], ...]:
    return (("x-syncgov-system", system),)


def record(
    system: str,
    local_id: str,
    name: str,
    vat: str = "",
    *,
    iban: str = "",
    street: str = "Hafenstrasse 1",
    postal: str = "20457",
) -> supplier_pb2.SupplierRecord:
    return supplier_pb2.SupplierRecord(
        source_system=system,
        local_id=local_id,
        legal_name=name,
        tax_ids=[supplier_pb2.TaxIdentifier(scheme="vat", value=vat)] if vat else [],
        addresses=[types_pb2.PostalAddress(lines=[street], locality="Hamburg", postal_code=postal, country_code="DE")],
        bank_accounts=[supplier_pb2.BankAccount(iban=iban)] if iban else [],
    )


async def submit(stub, rec, system=None):
    return await stub.SubmitSupplierRecord(
        pb.SubmitSupplierRecordRequest(record=rec), metadata=as_system(system or rec.source_system)
    )


async def test_one_golden_record_with_cross_references_and_owned_fields(suppliers, js):
    running, stub = suppliers
    first = await submit(
        stub,
        record("procurement", "P-1", "ACME Industrial Supply GmbH", "DE 136 695 976", iban="DE89370400440532013000"),
    )
    second = await submit(
        stub, record("erp", "100234", "Acme Industrial Supply G.m.b.H.", "de136695976", iban="DE02120300000000202051")
    )
    assert first.outcome == supplier_pb2.MATCH_OUTCOME_NEW
    assert second.outcome == supplier_pb2.MATCH_OUTCOME_MERGED
    golden = second.supplier
    assert golden.supplier_id == first.supplier.supplier_id
    assert golden.bank_accounts[0].iban == "DE02120300000000202051"
    assert golden.legal_name == "ACME Industrial Supply GmbH"
    provenance = {p.field: (p.source_system, p.local_id, p.from_owner) for p in golden.provenance}
    assert provenance["bank_accounts"] == ("erp", "100234", True)
    assert {(x.system, x.local_id) for x in golden.cross_references} == {("procurement", "P-1"), ("erp", "100234")}
    for system, local_id in (("erp", "100234"), ("procurement", "P-1")):
        resolved = await stub.ResolveSupplier(
            pb.ResolveSupplierRequest(system=system, local_id=local_id), metadata=as_system("erp")
        )
        assert resolved.supplier.supplier_id == golden.supplier_id
    reader = running.runtime.reader
    history = await reader.history("supplier", golden.supplier_id)
    assert [e.subject.rsplit(".", 1)[1] for e in history] == ["upserted", "upserted"]


async def test_findings_and_corrections_come_back_and_the_record_is_kept(suppliers):
    _, stub = suppliers
    answer = await submit(stub, record("erp", "9", "Broken Digits AG", "DE136695977", postal="2045"))
    fields = {f.field: f.problem for f in answer.findings}
    assert "check digit" in fields["identifiers[0]"]
    assert "postal code" in fields["addresses[0].postal_code"]
    assert answer.supplier.supplier_id


async def test_a_repeated_upsert_writes_nothing(suppliers, js):
    running, stub = suppliers
    rec = record("procurement", "P-7", "Hanse Papier GmbH", "DE129273398")
    first = await submit(stub, rec)
    again = await submit(stub, rec)
    assert again.outcome == supplier_pb2.MATCH_OUTCOME_UNCHANGED
    assert again.supplier == first.supplier
    assert (await js.stream_info(running.runtime.namespace.stream("supplier"))).state.messages == 1


async def test_suspected_duplicate_is_raised_once_and_a_decision_is_remembered(suppliers, js):
    running, stub = suppliers
    a = await submit(
        stub,
        record("procurement", "P-1", "Rheinland Logistik Partner GmbH", street="Industriestrasse 5", postal="50667"),
    )
    maybe = record("erp", "E-1", "Rheinland Logistic Partners", street="Industriestr. 7", postal="50667")
    b = await submit(stub, maybe)
    assert b.outcome == supplier_pb2.MATCH_OUTCOME_SUSPECTED
    assert [c.supplier_id for c in b.suspected_duplicates] == [a.supplier.supplier_id]
    [exception] = await raised_exceptions(js, running.runtime.namespace)
    assert exception.type == exception_pb2.EXCEPTION_TYPE_DUPLICATE_SUPPLIER_SUSPECTED
    assert exception.severity == exception_pb2.SEVERITY_LOW  # the default policy routes it so
    assert "name=" in exception.evidence[0]
    listed = await stub.ListDuplicateCandidates(pb.ListDuplicateCandidatesRequest(), metadata=as_system("erp"))
    assert [(p.supplier_id, p.candidate.supplier_id) for p in listed.pairs] == [
        (b.supplier.supplier_id, a.supplier.supplier_id)
    ]
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.DecideDuplicateCandidate(
            pb.DecideDuplicateCandidateRequest(
                supplier_id=b.supplier.supplier_id, other_supplier_id=a.supplier.supplier_id, reason="x"
            ),
            metadata=as_system("erp"),
        )
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await stub.DecideDuplicateCandidate(
        pb.DecideDuplicateCandidateRequest(
            supplier_id=b.supplier.supplier_id,
            other_supplier_id=a.supplier.supplier_id,
            same_supplier=False,
            reason="two firms, checked the register",
        ),
        metadata=as_system("ops-console"),
    )
    listed = await stub.ListDuplicateCandidates(pb.ListDuplicateCandidatesRequest(), metadata=as_system("erp"))
    assert list(listed.pairs) == []
    changed = record("erp", "E-1", "Rheinland Logistic Partners", street="Industriestr. 9", postal="50667")
    await submit(stub, changed)
    suspicions = [
        e
        for e in await raised_exceptions(js, running.runtime.namespace)
        if e.type == exception_pb2.EXCEPTION_TYPE_DUPLICATE_SUPPLIER_SUSPECTED
    ]
    assert len(suspicions) == 1, "a decided pair is never raised again"


async def test_a_system_may_report_only_its_own_records(suppliers):
    _, stub = suppliers
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await submit(stub, record("procurement", "P-9", "Somebody Else GmbH"), system="erp")
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await submit(stub, record("analytics", "A-1", "Reader Only GmbH"))
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_restarted_service_rebuilds_everything_from_the_stream(supplier_settings):
    async with running_service(supplier_settings, wire) as (_, channel, _):
        stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
        first = await submit(stub, record("procurement", "P-1", "Elbe Chemie GmbH", "DE136695976"))
        await stub.ChangeSupplierStatus(
            pb.ChangeSupplierStatusRequest(
                supplier_id=first.supplier.supplier_id,
                status=supplier_pb2.SUPPLIER_STATUS_BLOCKED,
                reason="compliance hold",
            ),
            metadata=as_system("procurement"),
        )
    async with running_service(supplier_settings, wire) as (_, channel, _):
        stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
        resolved = await stub.ResolveSupplier(
            pb.ResolveSupplierRequest(system="procurement", local_id="P-1"), metadata=as_system("erp")
        )
        assert resolved.supplier.supplier_id == first.supplier.supplier_id
        assert resolved.supplier.status == supplier_pb2.SUPPLIER_STATUS_BLOCKED
        joined = await submit(stub, record("erp", "E-5", "ELBE CHEMIE", "DE 136695976"))
        assert joined.supplier.supplier_id == first.supplier.supplier_id
        unchanged = await submit(stub, record("procurement", "P-1", "Elbe Chemie GmbH", "DE136695976"))
        assert unchanged.outcome == supplier_pb2.MATCH_OUTCOME_UNCHANGED
        await stub.ChangeSupplierStatus(
            pb.ChangeSupplierStatusRequest(
                supplier_id=first.supplier.supplier_id,
                status=supplier_pb2.SUPPLIER_STATUS_INACTIVE,
                reason="no longer used",
            ),
            metadata=as_system("procurement"),
        )
    async with running_service(supplier_settings, wire) as (running, channel, _):
        stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
        got = await stub.GetSupplier(
            pb.GetSupplierRequest(supplier_id=first.supplier.supplier_id), metadata=as_system("erp")
        )
        assert got.supplier.status == supplier_pb2.SUPPLIER_STATUS_INACTIVE
        history = await running.runtime.reader.history("supplier", first.supplier.supplier_id)
        assert [e.subject.rsplit(".", 1)[1] for e in history] == ["upserted", "blocked", "upserted", "deactivated"]


async def test_cli_import_of_a_supplier_master_file(suppliers, tmp_path):
    import asyncio
    import csv

    from typer.testing import CliRunner

    from libs.cli.main import app

    running, _ = suppliers
    path = tmp_path / "erp-suppliers.csv"
    rows = [
        {
            "local_id": "1",
            "legal_name": "ACME Industrial Supply GmbH",
            "country": "DE",
            "tax_id": "DE 136 695 976",
            "street": "Hafenstrasse 1",
            "city": "Hamburg",
            "postal_code": "20457",
            "iban": "DE02120300000000202051",
        },
        {
            "local_id": "2",
            "legal_name": "Acme Industrial Supply G.m.b.H.",
            "country": "Germany",
            "tax_id": "de136695976",
            "street": "Hafenstr. 1",
            "city": "Hamburg",
            "postal_code": "20457",
        },
        {"local_id": "3", "legal_name": "Broken Digits AG", "country": "DE", "tax_id": "DE136695977"},
        {
            "local_id": "4",
            "legal_name": "Hanse Papier GmbH",
            "country": "DE",
            "tax_id": "DE129273398",
            "phone": "040 1234567",
        },
    ]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle,
            fieldnames=[
                "local_id",
                "legal_name",
                "country",
                "tax_id",
                "street",
                "city",
                "postal_code",
                "phone",
                "iban",
            ],
        )
        writer.writeheader()
        writer.writerows(rows)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["suppliers", "import", str(path), "--system", "erp", "--address", running.address, "--concurrency", "1"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.stdout
    lines = {
        line.strip("│ ").rsplit("│", 1)[0].strip(): line.rsplit("│", 2)[-2].strip()
        for line in result.stdout.splitlines()
        if line.count("│") == 3
    }
    assert lines["records"] == "4"
    assert lines["new golden records"] == "3"
    assert lines["merged into an existing golden record"] == "1"
    assert lines["invalid identifiers"] == "1"
    assert int(lines["corrections"]) >= 4


async def test_find_merge_decision_and_merge_rpc_through_grpc(suppliers, js):
    running, stub = suppliers
    a = await submit(stub, record("procurement", "P-1", "Bavaria Tools GmbH", street="Werkstrasse 2", postal="80331"))
    b = await submit(stub, record("erp", "E-1", "Bavaria Werkzeuge", street="Werkstr. 2", postal="80331"))
    c = await submit(stub, record("erp", "E-2", "Isar Fasteners GmbH", street="Isarweg 9", postal="80469"))
    assert len({a.supplier.supplier_id, b.supplier.supplier_id, c.supplier.supplier_id}) == 3
    found = await stub.FindDuplicateSuppliers(
        pb.FindDuplicateSuppliersRequest(
            record=record("erp", "E-9", "Bavaria Tools", street="Werkstrasse 2", postal="80331")
        ),
        metadata=as_system("erp"),
    )
    assert found.candidates[0].supplier_id == a.supplier.supplier_id
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.DecideDuplicateCandidate(
            pb.DecideDuplicateCandidateRequest(
                supplier_id=b.supplier.supplier_id, other_supplier_id=a.supplier.supplier_id, same_supplier=True
            ),
            metadata=as_system("ops-console"),
        )
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT, "a decision needs its reason"
    decided = await stub.DecideDuplicateCandidate(
        pb.DecideDuplicateCandidateRequest(
            supplier_id=b.supplier.supplier_id,
            other_supplier_id=a.supplier.supplier_id,
            same_supplier=True,
            reason="same firm, German trading name",
        ),
        metadata=as_system("ops-console"),
    )
    assert decided.supplier.supplier_id == a.supplier.supplier_id
    assert {(x.system, x.local_id) for x in decided.supplier.cross_references} == {
        ("procurement", "P-1"),
        ("erp", "E-1"),
    }
    merged = await stub.MergeSuppliers(
        pb.MergeSuppliersRequest(
            surviving_supplier_id=a.supplier.supplier_id, merged_supplier_id=c.supplier.supplier_id, reason="acquired"
        ),
        metadata=as_system("procurement"),
    )
    assert len(merged.supplier.cross_references) == 3
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.MergeSuppliers(
            pb.MergeSuppliersRequest(
                surviving_supplier_id=a.supplier.supplier_id, merged_supplier_id=c.supplier.supplier_id, reason="again"
            ),
            metadata=as_system("procurement"),
        )
    assert failure.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    resolved = await stub.ResolveSupplier(
        pb.ResolveSupplierRequest(system="erp", local_id="E-2"), metadata=as_system("erp")
    )
    assert resolved.supplier.supplier_id == a.supplier.supplier_id
    history = await running.runtime.reader.history("supplier", b.supplier.supplier_id)
    assert [e.subject.rsplit(".", 1)[1] for e in history] == ["upserted", "decided"]


async def test_resolving_without_a_system_or_id_is_invalid_argument(suppliers):
    _, stub = suppliers
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.ResolveSupplier(pb.ResolveSupplierRequest(system="erp"), metadata=as_system("erp"))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "local_id" in (failure.value.details() or "")
