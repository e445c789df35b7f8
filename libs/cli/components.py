"""The components of the suite, their modules and default ports (DESIGN §2)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

DEFAULT_GRPC_PORT_BASE = 50050
DEFAULT_METRICS_PORT_BASE = 9460


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    module: str
    port_offset: int

    def grpc_port(self, base: int) -> int:
        return base + self.port_offset

    def exists(self) -> bool:
        """True once the component's package has a ``__main__`` (later issues add the others)."""
        try:
            return importlib.util.find_spec(f"{self.module}.__main__") is not None
        except ModuleNotFoundError:
            return False


COMPONENTS = (
    Component("control-plane", "control_plane", 0),
    Component("supplier-normalization", "services.supplier_normalization", 1),
    Component("po-publication", "services.po_publication", 2),
    Component("receipt-reconciliation", "services.receipt_reconciliation", 3),
    Component("invoice-status", "services.invoice_status", 4),
    Component("exception-router", "services.exception_router", 5),
)


def existing_components() -> list[Component]:
    return [component for component in COMPONENTS if component.exists()]
