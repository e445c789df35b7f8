"""python -m services.invoice_status"""

from libs.runtime.app import run
from services.invoice_status.settings import Settings
from services.invoice_status.wiring import wire

if __name__ == "__main__":
    run(Settings, wire)
