"""Generate Python stubs from protos/ into libs/genproto/ (``make proto``).

google/type protos come from the installed googleapis-common-protos package:
they are copied into protos/third_party/ so buf resolves the same imports
offline, and passed to protoc as an include path. Generated code is never
edited by hand and never committed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
THIRD_PARTY = PROTOS / "third_party"
OUT = ROOT / "libs" / "genproto"
GOOGLE_TYPES = ("money.proto", "decimal.proto", "date.proto")


def googleapis_proto_root() -> Path:
    import google.type.money_pb2 as money  # shipped with googleapis-common-protos

    return Path(money.__file__).resolve().parents[2]


def copy_third_party() -> Path:
    source_root = googleapis_proto_root()
    target = THIRD_PARTY / "google" / "type"
    target.mkdir(parents=True, exist_ok=True)
    for name in GOOGLE_TYPES:
        shutil.copyfile(source_root / "google" / "type" / name, target / name)
    return source_root


def generate() -> int:
    copy_third_party()
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "syncgov").rglob("*.proto"))
    generated = OUT / "syncgov"
    if generated.exists():
        shutil.rmtree(generated)
    OUT.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{THIRD_PARTY}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
        return code
    for folder in [generated, *(p for p in generated.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    print(f"generated {len(sources)} proto files into {generated.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(generate())
