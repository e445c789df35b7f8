"""Benchmark: the pure three-way match (services/invoice_status/matching.py) on generated invoice lines.

    .venv/bin/python bench/match_invoices.py [--lines 100000] [--seed 11] [--runs 3] [--profile]

Generates ``--lines`` invoice lines (seeded) on invoices of 1 to 12 lines, each invoice billing one purchase
order, with the facts they are matched against: PO lines (EUR mostly, some USD and JPY; 10% services, matched
two-way), receipts and returns, and quantities other invoices already invoiced. Most lines match; planted
among them: a price within tolerance, a price variance beyond 2% or beyond the absolute limit, over-invoiced
quantities, lines awaiting their receipt, unknown PO lines, a cancelled order, another currency, line
amounts that do not add up; per invoice, totals off by a small difference (accepted) or by more (blocked),
duplicates (the number written otherwise) and suspected duplicates (same amount, two days apart).

Then it times ``match_invoice`` over all invoices on one core (the process is pinned to one CPU), with the
duplicate check against each supplier's last ``--history`` invoices and without it, ``--runs`` times each,
and prints lines/s (best and median) and the share of each outcome. The tolerances are the shipped default
policy's (deploy/policy/default.yaml). Figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import statistics
import sys
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from libs.policy.engine import Policy
from services.invoice_status.domain import (
    Invoice,
    InvoiceLine,
    LineKey,
    MatchFacts,
    MatchResult,
    PoLineFacts,
    ReceivedFacts,
    TolerancePolicy,
)
from services.invoice_status.matching import match_invoice

CENT = Decimal("0.01")
BUSINESS_UNITS = ("FOOD", "INDUSTRIAL", "BU-1")
# Per line: what is planted, and how often (the rest match exactly).
LINE_PLANTS = (
    ("price_within", 0.05),  # one unit up to 0.2% above the PO price: matched
    ("price_percent", 0.015),  # 3-8% above: price_variance
    ("price_absolute", 0.01),  # 0.2% above on a line worth more than 5.00 of variance: price_variance
    ("quantity_over", 0.02),  # more than was received: quantity_variance
    ("awaiting_receipt", 0.02),
    ("unknown_line", 0.002),
    ("line_arithmetic", 0.002),
)
INVOICE_PLANTS = (
    ("small_difference", 0.02),  # net total 0.01-1.00 off: accepted and reported
    ("header_error", 0.005),  # gross total 5.00 off: arithmetic_error
    ("duplicate", 0.005),  # a supplier's earlier invoice again, its number written otherwise
    ("suspected", 0.01),  # a supplier's earlier invoice again two days later under another number
    ("cancelled", 0.003),
    ("currency", 0.003),
)


@dataclass
class Workload:
    invoices: list[Invoice]
    earlier: list[list[Invoice]]  # per invoice: the supplier's last invoices before it
    facts: MatchFacts
    lines: int


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, ROUND_HALF_UP)


def _pick(rng: random.Random, plants: tuple[tuple[str, float], ...]) -> str:
    draw = rng.random()
    for name, share in plants:
        if draw < share:
            return name
        draw -= share
    return "exact"


def generate(lines_wanted: int, seed: int, history: int) -> Workload:
    rng = random.Random(seed)
    po_lines: dict[LineKey, PoLineFacts] = {}
    received: dict[LineKey, ReceivedFacts] = {}
    others: dict[LineKey, Decimal] = {}
    invoices: list[Invoice] = []
    earlier: list[list[Invoice]] = []
    recent: dict[str, deque[Invoice]] = defaultdict(lambda: deque(maxlen=history))
    suppliers = [f"SUP-{n:04d}" for n in range(400)]
    day0 = date(2026, 1, 1)
    produced = 0
    number = 0
    while produced < lines_wanted:
        number += 1
        po_id = f"PO-{number:07d}"
        supplier = rng.choice(suppliers)
        invoice_plant = _pick(rng, INVOICE_PLANTS)
        currency = "EUR" if rng.random() < 0.85 else rng.choice(("USD", "JPY"))
        unit = rng.choice(BUSINESS_UNITS)
        count = min(rng.randint(1, 12), lines_wanted - produced)
        lines: list[InvoiceLine] = []
        for index in range(1, count + 1):
            plant = _pick(rng, LINE_PLANTS)
            ordered = Decimal(rng.choice((1, 2, 5, 10, 12, 24, 48, 100, 250, 1000)))
            if currency == "JPY":
                price = Decimal(rng.randint(50, 90_000))
            else:
                price = Decimal(rng.randint(50, 250_000)).scaleb(-2)
            two_way = rng.random() < 0.10
            key = (po_id, index)
            po_lines[key] = PoLineFacts(
                po_version=rng.randint(1, 4),
                ordered_quantity=ordered,
                unit_price=price,
                currency="USD" if invoice_plant == "currency" and currency != "USD" else currency,
                business_unit=unit,
                cancelled=invoice_plant == "cancelled",
                receipt_expected=not two_way,
            )
            # Usually fully received; a quarter partly, some with a return; one in six partly invoiced before.
            got = (
                ordered
                if rng.random() < 0.75
                else max(Decimal(1), (ordered * Decimal(rng.randint(30, 90)) / 100).to_integral_value())
            )
            back = Decimal(0) if rng.random() < 0.95 or got < 2 else Decimal(1)
            before = Decimal(0)
            if rng.random() < 1 / 6 and got - back >= 2:
                before = ((got - back) / 2).to_integral_value()
                others[key] = before
            quantity = got - back - before
            invoiced_price = price
            if plant == "awaiting_receipt" and not two_way:
                quantity = ordered
            else:
                received[key] = ReceivedFacts(got, back)
            if plant == "price_within":
                invoiced_price = _money(price * (1 + Decimal(rng.randint(1, 2)) / 1000))
                quantity = Decimal(1)  # one unit up to 0.2% above: within 2% and within 5.00
            elif plant == "price_percent":
                invoiced_price = _money(price * (1 + Decimal(rng.randint(30, 80)) / 1000))
            elif plant == "price_absolute":
                invoiced_price = _money(price * Decimal("1.002")) + CENT
                quantity = max(quantity, Decimal(1000))
                received[key] = ReceivedFacts(quantity + before, Decimal(0))
            elif plant == "quantity_over":
                quantity += Decimal(rng.randint(1, 5))
            if currency == "JPY":
                invoiced_price = invoiced_price.to_integral_value(ROUND_HALF_UP)
            po_line = index if plant != "unknown_line" else 900 + index
            amount = _money(quantity * invoiced_price) if currency != "JPY" else (quantity * invoiced_price)
            if plant == "line_arithmetic":
                amount += CENT
            tax = _money(amount * Decimal("0.19"))
            lines.append(InvoiceLine(index, po_id, po_line, quantity, invoiced_price, amount, tax))
        net = sum((line.line_amount for line in lines), Decimal(0))
        tax_total = sum((line.tax_amount or Decimal(0) for line in lines), Decimal(0))
        gross = net + tax_total
        invoice_number = f"INV-{number:08d}"
        invoice_day = day0 + timedelta(days=rng.randint(0, 360))
        candidates = list(recent[supplier])
        if invoice_plant == "small_difference":
            net += Decimal(rng.randint(1, 100)).scaleb(-2)
            gross = net + tax_total
        elif invoice_plant == "header_error":
            gross += Decimal(5)
        elif invoice_plant == "duplicate" and candidates:
            copy = rng.choice(candidates)
            invoice_number = copy.invoice_number.replace("INV-000", "inv ")
        document = Invoice(
            invoice_id=f"I-{number:07d}",
            supplier_id=supplier,
            invoice_number=invoice_number,
            invoice_date=invoice_day,
            currency=currency,
            lines=tuple(lines),
            net_total=net,
            tax_total=tax_total,
            gross_total=gross,
        )
        if invoice_plant == "suspected" and candidates:
            # An earlier invoice of the supplier sent again two days later under another number.
            copy = rng.choice(candidates)
            if len(copy.lines) <= lines_wanted - produced:
                document = replace(
                    copy,
                    invoice_id=document.invoice_id,
                    invoice_number=invoice_number,
                    invoice_date=copy.invoice_date + timedelta(days=2),
                )
        invoices.append(document)
        earlier.append(candidates)
        recent[supplier].append(document)
        produced += len(document.lines)
    return Workload(invoices, earlier, MatchFacts(po_lines, received, others), produced)


def run(work: Workload, tolerances: TolerancePolicy, *, duplicates: bool) -> float:
    """Seconds to match every invoice once; each result is dropped as the service would after recording it."""
    facts = work.facts
    started = time.perf_counter()
    if duplicates:
        for invoice, earlier in zip(work.invoices, work.earlier, strict=True):
            match_invoice(invoice, facts, tolerances, earlier=earlier)
    else:
        for invoice in work.invoices:
            match_invoice(invoice, facts, tolerances)
    return time.perf_counter() - started


def outcomes(results: list[MatchResult], lines: int) -> None:
    per_line: Counter[str] = Counter()
    for result in results:
        for line in result.lines:
            if line.matched:
                per_line["matched"] += 1
            for reason in line.reasons:
                per_line[str(reason)] += 1
    print(f"\nper line ({lines:,} lines; a line blocked for two reasons counts under both):")
    for name, count in per_line.most_common():
        print(f"  {name:<20} {count:>8,}  {100 * count / lines:6.2f}%")
    per_invoice: Counter[str] = Counter()
    for result in results:
        per_invoice[str(result.state)] += 1
        for reason in result.header_reasons:
            per_invoice[f"header {reason}"] += 1
        if result.accepted_small_differences:
            per_invoice["small difference accepted"] += 1
        if result.needs_review:
            per_invoice["suspected duplicate"] += 1
    total = len(results)
    print(f"\nper invoice ({total:,} invoices):")
    for name, count in per_invoice.most_common():
        print(f"  {name:<28} {count:>8,}  {100 * count / total:6.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--history", type=int, default=20, help="duplicate candidates per supplier")
    parser.add_argument("--profile", action="store_true", help="print the top functions of one run")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        print(f"pinned to CPU {cpu}")
    tolerances = TolerancePolicy.of(
        Policy.from_text((ROOT / "deploy" / "policy" / "default.yaml").read_text(), revision=0).document.tolerances
    )
    started = time.perf_counter()
    work = generate(args.lines, args.seed, args.history)
    print(
        f"generated {work.lines:,} lines on {len(work.invoices):,} invoices in {time.perf_counter() - started:.1f}s "
        f"(seed {args.seed})"
    )
    match_invoice(work.invoices[0], work.facts, tolerances)  # warm the caches (currency quanta, numbers)
    for duplicates in (True, False):
        times = [run(work, tolerances, duplicates=duplicates) for _ in range(args.runs)]
        label = f"with duplicate check ({args.history} candidates/supplier)" if duplicates else "match only"
        best, median = min(times), statistics.median(times)
        print(
            f"{label:<45} best {work.lines / best:>9,.0f} lines/s ({best:.2f}s)   "
            f"median {work.lines / median:>9,.0f} lines/s   "
            f"{1e6 * best / work.lines:.1f} us/line"
        )
    results = [
        match_invoice(invoice, work.facts, tolerances, earlier=earlier)
        for invoice, earlier in zip(work.invoices, work.earlier, strict=True)
    ]
    outcomes(results, work.lines)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(work, tolerances, duplicates=True)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
