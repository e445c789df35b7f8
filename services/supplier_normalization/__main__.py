"""python -m services.supplier_normalization"""

from libs.runtime.app import run
from services.supplier_normalization.settings import Settings
from services.supplier_normalization.wiring import wire

if __name__ == "__main__":
    run(Settings, wire)
