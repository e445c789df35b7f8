"""Benchmark: supplier normalization and duplicate detection on generated and on real labelled data.

    .venv/bin/python bench/supplier_dedup.py [--records 100000] [--seed 7]

1. Generated: ``--records`` supplier records from several systems, of which a known set are planted
   duplicates (same company: another system's id, legal form spelled otherwise, case and punctuation,
   a typo, the VAT number formatted otherwise or missing) and planted near-misses (similar names,
   different valid VAT numbers). Prints records/s, pairwise precision and recall of automatic merges
   (and with suspected duplicates counted as found), and peak memory.
2. Real labelled data nobody here wrote (../shared/realdata/supplier-master, see SOURCES.md there):
   PATSTAT applicant names (102 organisation clusters) and the Chicago early-childhood provider
   records (746 duplicate clusters). Prints pairwise precision and recall; skipped with a reason when
   the folder is absent. The matcher is tuned on principles, not on these files.

Figures only; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import sys
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stdnum.iso7064 import mod_11_10

from libs.policy.engine import Policy
from services.supplier_normalization.domain import SupplierRegistry
from services.supplier_normalization.matching import Outcome
from services.supplier_normalization.normalize import Address, Contact, Identifier, SourceRecord

REALDATA = ROOT.parent / "shared" / "realdata" / "supplier-master"
SECTORS = [
    "Logistik",
    "Logistics",
    "Industrial Supply",
    "Foods",
    "Packaging",
    "Chemicals",
    "Tools",
    "Textiles",
    "Electronics",
    "Paper",
    "Plastics",
    "Metals",
    "Hygiene",
    "Beverages",
    "Components",
    "Trading",
]
FORMS = {
    "GmbH": ["G.m.b.H.", "GMBH", "Gmbh"],
    "AG": ["A.G.", "Aktiengesellschaft"],
    "KG": ["K.G."],
    "Ltd": ["Limited", "LTD.", "Ltd."],
    "Inc": ["Inc.", "Incorporated", "INC"],
    "BV": ["B.V."],
    "SARL": ["S.A.R.L.", "Sarl"],
}
CITIES = [("Hamburg", "2"), ("Berlin", "1"), ("Köln", "5"), ("München", "8"), ("Frankfurt", "6"), ("Leipzig", "0")]
STREETS = ["Hafenstrasse", "Industriestrasse", "Hauptstrasse", "Bahnhofstrasse", "Gewerbering", "Lagerweg"]


def pseudo_words(rng: random.Random, count: int) -> list[str]:
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < count:
        syllables = rng.randint(2, 3)
        words.add(
            "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)).capitalize()
            + rng.choice(["", "ex", "on", "ia", "ar", "is"])
        )
    return sorted(words)


def de_vat(rng: random.Random) -> str:
    body = str(rng.randint(10_000_000, 99_999_999))
    return f"DE{body}{mod_11_10.calc_check_digit(body)}"


def typo(rng: random.Random, text: str) -> str:
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if len(letters) < 6:
        return text
    i = rng.choice(letters[1:-1])
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :] if i + 1 < len(text) else text


def generate(records: int, seed: int) -> tuple[list[SourceRecord], list[int], int, int]:
    """Records, their true entity ids, planted duplicates, planted near-misses."""
    rng = random.Random(seed)
    words = pseudo_words(rng, 6000)
    systems = ["procurement", "erp", "supplier-portal"]
    entities: list[dict] = []
    out: list[SourceRecord] = []
    truth: list[int] = []
    planted = near = 0
    while len(out) < records:
        roll = rng.random()
        if entities and roll < 0.18:  # a planted duplicate of an earlier company, from another system
            entity_id = rng.randrange(len(entities))
            e = entities[entity_id]
            form = rng.choice([e["form"], *FORMS[e["form"]]])
            name = f"{e['stem']} {form}"
            name = rng.choice([name, name.upper(), name.lower(), name.replace(" ", "  "), typo(rng, name)])
            vat = e["vat"]
            if vat:
                vat = rng.choice([vat, vat.lower(), f"{vat[:2]} {vat[2:5]} {vat[5:8]} {vat[8:]}", vat[2:], ""])
            street = e["street"] if rng.random() < 0.7 else e["street"].replace("strasse", "str.")
            out.append(
                SourceRecord(
                    rng.choice(systems),
                    f"X{len(out)}",
                    name,
                    "DE",
                    (Identifier("vat", vat),) if vat else (),
                    (Address((street,), e["city"], "", e["postal"]),),
                )
            )
            truth.append(entity_id)
            planted += 1
            continue
        stem = f"{rng.choice(words)} {rng.choice(words)} {rng.choice(SECTORS)}"
        if entities and roll < 0.21:  # a near-miss: another company with a similar name and its own VAT
            base = entities[rng.randrange(len(entities))]
            if base["vat"]:
                stem = base["stem"].rsplit(" ", 1)[0] + " " + rng.choice(SECTORS)
                near += 1
        form = rng.choice(list(FORMS))
        city, prefix = rng.choice(CITIES)
        entity = {
            "stem": stem,
            "form": form,
            "vat": de_vat(rng) if rng.random() < 0.75 else "",
            "city": city,
            "postal": f"{prefix}{rng.randint(1000, 9999)}",
            "street": f"{rng.choice(STREETS)} {rng.randint(1, 200)}",
        }
        entities.append(entity)
        out.append(
            SourceRecord(
                rng.choice(systems),
                f"X{len(out)}",
                f"{stem} {form}",
                "DE",
                (Identifier("vat", entity["vat"]),) if entity["vat"] else (),
                (Address((entity["street"],), city, "", entity["postal"]),),
                (Contact(phone=f"+49 40 {rng.randint(1000000, 9999999)}"),),
            )
        )
        truth.append(len(entities) - 1)
    return out, truth, planted, near


def pairwise(predicted: list[str | None], truth: list) -> tuple[float, float, int, int]:
    """Pairwise precision and recall of a clustering against the true clusters."""

    def pairs(labels) -> set[tuple[int, int]]:
        groups: dict = defaultdict(list)
        for index, label in enumerate(labels):
            groups[label].append(index)
        return {pair for members in groups.values() if len(members) > 1 for pair in combinations(members, 2)}

    found, true = pairs(predicted), pairs(truth)
    hits = len(found & true)
    return (hits / len(found) if found else 1.0), (hits / len(true) if true else 1.0), len(found), len(true)


def run(records: list[SourceRecord], owner) -> tuple[list[str | None], list[str | None], float]:
    """Place every record in one process: placement depends on order, so it is one sequence anyway, and
    normalizing in a second process cost more in pickling than it saved (measured, 2026-11-26)."""
    registry = SupplierRegistry(owner)
    started = time.perf_counter()
    placed = [registry.submit(record) for record in records]
    elapsed = time.perf_counter() - started
    merged = [registry.golden_of(r.source_system, r.local_id) for r in records]
    # Counting suspected duplicates as found: each record joins the best candidate it was suspected of.
    suspected = list(merged)
    for index, submission in enumerate(placed):
        if submission.outcome is Outcome.SUSPECTED and submission.suspected:
            suspected[index] = registry.resolve(submission.suspected[0].golden_id)
    return merged, suspected, elapsed


def real_patstat() -> tuple[list[SourceRecord], list[str]] | None:
    folder = REALDATA / "dedupe-patent-example"
    if not folder.exists():
        return None
    clusters = {row["person_id"]: row["leuven_id"] for row in csv.DictReader((folder / "patstat_reference.csv").open())}
    records, truth = [], []
    for row in csv.DictReader((folder / "patstat_input.csv").open()):
        records.append(SourceRecord("patstat", row["person_id"], row["Name"]))
        truth.append(clusters[row["person_id"]])
    return records, truth


def real_chicago() -> tuple[list[SourceRecord], list[str]] | None:
    path = REALDATA / "dedupe-csv-example" / "csv_example_input_with_true_ids.csv"
    if not path.exists():
        return None
    records, truth = [], []
    for row in csv.DictReader(path.open(encoding="utf-8", errors="replace")):
        address = (Address((row["Address"],), "", "", (row["Zip"] or "").strip()),) if row["Address"] else ()
        phone = (Contact(phone=row["Phone"]),) if row["Phone"] else ()
        records.append(SourceRecord("chicago", row["Id"], row["Site name"] or "", "US", (), address, phone))
        truth.append(row["True Id"])
    return records, truth


async def through_the_service(records: list[SourceRecord], concurrency: int) -> tuple[float, int]:
    """records/s of the same records through gRPC, the edge, the registry and a JetStream publish each."""
    import asyncio
    import os
    import subprocess
    import tempfile
    import uuid

    import grpc

    from libs.runtime.local_servers import NatsServer, ValkeyServer, free_port
    from libs.runtime.probe import health_status
    from services.supplier_normalization.mapping import record_to_proto
    from syncgov.supplier.v1 import supplier_service_pb2, supplier_service_pb2_grpc

    workdir = Path(tempfile.mkdtemp(prefix="syncgov-suppliers-"))
    nats_server = NatsServer(data_dir=workdir / "nats").start()
    valkey = ValkeyServer(data_dir=workdir / "valkey").start()
    port = free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "services.supplier_normalization"],
        cwd=ROOT,
        env={
            **os.environ,
            "SYNCGOV_NATS_URL": nats_server.url,
            "SYNCGOV_REDIS_URL": valkey.url,
            "SYNCGOV_NAMESPACE": "b" + uuid.uuid4().hex[:8],
            "SYNCGOV_GRPC_PORT": str(port),
            "SYNCGOV_LOG_LEVEL": "ERROR",
        },
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            while await health_status(channel) != "SERVING":  # noqa: ASYNC110 - polling another process
                await asyncio.sleep(0.2)
            stub = supplier_service_pb2_grpc.SupplierNormalizationServiceStub(channel)
            requests = [supplier_service_pb2.SubmitSupplierRecordRequest(record=record_to_proto(r)) for r in records]
            queue = iter(requests)

            async def worker() -> None:
                for request in queue:
                    await stub.SubmitSupplierRecord(
                        request, metadata=(("x-syncgov-system", request.record.source_system),)
                    )

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
        return len(records) / elapsed, len(records)
    finally:
        service.terminate()
        service.wait(10)
        valkey.stop()
        nats_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--service-records", type=int, default=5000, help="also send this many through the running service (0: skip)"
    )
    args = parser.parse_args()
    policy = Policy.from_text((ROOT / "deploy" / "policy" / "default.yaml").read_text(), 0)

    def owner(field: str) -> str:
        return policy.ownership_of("supplier", field).system_of_record

    records, truth, planted, near = generate(args.records, args.seed)
    merged, suspected, elapsed = run(records, owner)
    precision, recall, found, true = pairwise(merged, truth)
    s_precision, s_recall, s_found, _ = pairwise(suspected, truth)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"generated: {len(records)} records, {planted} planted duplicates, {near} planted near-misses "
        f"(similar name, different VAT), {true} true duplicate pairs"
    )
    print(f"  throughput: {len(records) / elapsed:,.0f} records/s (normalize + match + place, one process)")
    print(f"  automatic merges:     precision {precision:.4f}  recall {recall:.4f}  ({found} pairs merged)")
    print(f"  merges + suspected:   precision {s_precision:.4f}  recall {s_recall:.4f}  ({s_found} pairs)")
    print(f"  peak memory (max RSS): {peak_mb:,.0f} MiB")
    if args.service_records:
        import asyncio

        rate, count = asyncio.run(through_the_service(records[: args.service_records], concurrency=32))
        print(
            f"  through the service: {rate:,.0f} records/s ({count} records: gRPC + edge + registry + one "
            "JetStream publish each, fsync always, service and servers on the same 2 cores)"
        )
    for name, loader in (("PATSTAT applicant names", real_patstat), ("Chicago provider records", real_chicago)):
        loaded = loader()
        if loaded is None:
            print(f"{name}: skipped, {REALDATA} is absent")
            continue
        real_records, real_truth = loaded
        real_merged, real_suspected, _ = run(real_records, owner)
        p, r, f, t = pairwise(real_merged, real_truth)
        sp, sr, _, _ = pairwise(real_suspected, real_truth)
        clusters = len(set(real_truth))
        print(f"{name}: {len(real_records)} records, {clusters} true clusters, {t} true pairs")
        print(f"  automatic merges:     precision {p:.4f}  recall {r:.4f}  ({f} pairs merged)")
        print(f"  merges + suspected:   precision {sp:.4f}  recall {sr:.4f}")


if __name__ == "__main__":
    main()
