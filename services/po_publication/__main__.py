"""python -m services.po_publication"""

from libs.runtime.app import run
from services.po_publication.settings import Settings
from services.po_publication.wiring import wire

if __name__ == "__main__":
    run(Settings, wire)
