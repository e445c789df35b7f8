"""python -m control_plane"""

from control_plane.settings import Settings
from control_plane.wiring import wire
from libs.runtime.app import run

if __name__ == "__main__":
    run(Settings, wire)
