"""Regenerate the protobuf / gRPC modules under xdm/v1/ from proto/xdm/v1/*.proto.

`python -m xdm.codegen` (or `xdm codegen`) is the one way generated code is made; a test regenerates into
a temporary folder and diffs, so a stale or hand-edited module fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
PROTO_FILES = ("xdm/v1/events.proto", "xdm/v1/recall.proto")


class CodegenError(RuntimeError):
    """protoc rejected a .proto file."""


def generate(out_dir: Path = REPO_ROOT) -> list[Path]:
    """Run protoc with -Iproto so imports come out as `from xdm.v1 import ...`; returns written files."""
    from grpc_tools import protoc
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    out = str(out_dir)
    (out_dir / "xdm" / "v1").mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *PROTO_FILES]
    if protoc.main(args) != 0:
        raise CodegenError(f"protoc failed on {', '.join(PROTO_FILES)}; see its message above")
    return sorted(p for p in (out_dir / "xdm" / "v1").iterdir() if p.suffix in {".py", ".pyi"} and p.name != "__init__.py")


if __name__ == "__main__":
    for path in generate():
        sys.stdout.write(f"{path.relative_to(REPO_ROOT)}\n")
