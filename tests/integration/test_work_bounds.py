"""One request cannot stall a service: the largest request the bounds allow still leaves health answering
within a one-second deadline (issue 9: two ~1 MB supplier names once stalled supplier-normalization 21 s)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from libs.runtime.testing import running_service
from services.supplier_normalization.wiring import wire
from syncgov.common.v1 import types_pb2
from syncgov.supplier.v1 import supplier_pb2, supplier_service_pb2, supplier_service_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
ERP = (("x-syncgov-system", "erp"),)


def largest_record(local_id: str, seed: str) -> supplier_pb2.SupplierRecord:
    name = (seed + " Industrial Supply and Logistics Holding ") * 30  # about the 1,000-character bound
    address = types_pb2.PostalAddress(
        lines=[(("Hafenstrasse " + seed + " ") * 18)[:256]] * 10,
        locality="Hamburg",
        postal_code="20457",
        country_code="DE",
    )
    return supplier_pb2.SupplierRecord(
        source_system="erp",
        local_id=local_id,
        legal_name=name[:1000],
        addresses=[address] * 50,
        contacts=[supplier_pb2.Contact(name=name[:1000], email="a@example.com")] * 50,
    )


async def test_health_answers_within_a_second_while_the_largest_requests_run(supplier_settings):
    async with running_service(supplier_settings, wire) as (_, channel, _):
        stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
        health: Any = health_pb2_grpc.HealthStub(channel)  # the typing stubs declare no methods
        for number in range(20):  # a populated block for the matcher to compare against
            await stub.SubmitSupplierRecord(
                supplier_service_pb2.SubmitSupplierRecordRequest(record=largest_record(f"seed-{number}", "Acme")),
                metadata=ERP,
            )

        async def heavy(number: int) -> None:
            record = largest_record(f"heavy-{number}", "Acme")
            await stub.SubmitSupplierRecord(
                supplier_service_pb2.SubmitSupplierRecordRequest(record=record), metadata=ERP
            )
            await stub.FindDuplicateSuppliers(
                supplier_service_pb2.FindDuplicateSuppliersRequest(record=record), metadata=ERP
            )

        async def megabyte_names() -> None:
            record = largest_record("huge", "Acme")
            record.legal_name = "Acme " * 200_000
            record.contacts[0].name = "Zeta " * 200_000
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.SubmitSupplierRecord(
                    supplier_service_pb2.SubmitSupplierRecordRequest(record=record), metadata=ERP
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        work = asyncio.gather(megabyte_names(), *(heavy(n) for n in range(6)))
        checks = 0
        while not work.done():
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)  # DEADLINE_EXCEEDED fails
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            checks += 1
            await asyncio.sleep(0.05)
        await work
        assert checks >= 1
