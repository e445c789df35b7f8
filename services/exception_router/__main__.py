"""python -m services.exception_router"""

from libs.runtime.app import run
from services.exception_router.settings import Settings
from services.exception_router.wiring import wire

if __name__ == "__main__":
    run(Settings, wire)
