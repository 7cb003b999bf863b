"""The one cffi FFI of fastpath: declares the public C functions and compiles them in place."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent


def declarations() -> str:
    """The header's declarations for cffi's cdef, so that they are written once: everything between
    its includes and its closing #endif (cffi drops the comments and takes `#define NAME 42` as an
    integer constant)."""
    text = (HERE / "cairn_fastpath.h").read_text()
    return text.split("#include <stdint.h>", 1)[1].rsplit("#endif", 1)[0]


ffibuilder = FFI()
ffibuilder.cdef(declarations())
ffibuilder.set_source(
    "fastpath._cairn_fastpath",
    '#include "cairn_fastpath.h"',
    sources=[str(HERE / "cairn_fastpath.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra"],
    libraries=["m"],
)


def build() -> None:
    """Compile the extension next to this file, where `import fastpath` finds it."""
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)


if __name__ == "__main__":
    build()
