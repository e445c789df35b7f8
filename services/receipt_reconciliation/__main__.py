"""python -m services.receipt_reconciliation"""

from libs.runtime.app import run
from services.receipt_reconciliation.settings import Settings
from services.receipt_reconciliation.wiring import wire

if __name__ == "__main__":
    run(Settings, wire)
