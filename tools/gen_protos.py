"""Generate Python stubs from protos/ into libs/genproto/ (``make proto``).

The google/type protos the contracts import are committed under
protos/third_party/ (unchanged copies from the googleapis-common-protos
package, Apache-2.0) so buf resolves them offline; protoc compiles against
those copies, and this script warns when the installed package's copies
differ from them (the generated code imports the installed package's modules
at run time). Generated code is never edited by hand and never committed.
"""

from __future__ import annotations

import filecmp
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


def check_third_party() -> list[str]:
    """Names of the committed google/type copies that differ from (or are missing beside) the installed ones."""
    installed = googleapis_proto_root() / "google" / "type"
    committed = THIRD_PARTY / "google" / "type"
    return [
        name
        for name in GOOGLE_TYPES
        if not (installed / name).is_file() or not filecmp.cmp(installed / name, committed / name, shallow=False)
    ]


def generate() -> int:
    missing = [name for name in GOOGLE_TYPES if not (THIRD_PARTY / "google" / "type" / name).is_file()]
    if missing:
        print(f"protos/third_party/google/type lacks {', '.join(missing)} (they are committed)", file=sys.stderr)
        return 1
    differing = check_third_party()
    if differing:
        print(
            f"warning: protos/third_party/google/type/{{{','.join(differing)}}} differ from the installed "
            "googleapis-common-protos copies; see protos/third_party/README.md",
            file=sys.stderr,
        )
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
