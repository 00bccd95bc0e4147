"""The build hook: the gRPC code of the `profilemesh` package is generated from protos/ when the wheel is built.

Everything else about the package is declared in pyproject.toml. The generated modules are never in the
source tree (gen/ is `make proto`'s, for development), so the wheel is the only place they exist.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PROTOS = ROOT / "protos"


def _include_dirs() -> list[str]:
    """protos/, the google/api protos (googleapis-common-protos) and the well-known types (grpc_tools)."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = next(
        (Path(entry) for entry in sys.path if (Path(entry) / "google" / "api" / "annotations.proto").is_file()), None
    )
    if googleapis is None:
        raise RuntimeError("google/api/annotations.proto not found: googleapis-common-protos is a build requirement")
    return [str(PROTOS), str(googleapis), str(well_known)]


def generate(out: Path) -> list[str]:
    """Run protoc (grpc_tools) over every .proto file into `out`; returns the files written."""
    from grpc_tools import protoc

    sources = sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    arguments = ["grpc_tools.protoc", *(f"-I{directory}" for directory in _include_dirs())]
    arguments += [f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *sources]
    if protoc.main(arguments) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(sources)}")
    written = []
    for source in sources:
        stem = out / source.removesuffix(".proto")
        written += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return written


class BuildPyWithProtos(build_py):
    """build_py, plus the generated gRPC modules (package `profilemesh`) in the build directory."""

    def run(self) -> None:
        super().run()
        self._generated = generate(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), *getattr(self, "_generated", [])]


setup(cmdclass={"build_py": BuildPyWithProtos})
