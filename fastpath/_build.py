"""The one cffi FFI of fastpath: declares the public C functions and compiles them in place."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = """
#define CAIRN_OK ...
#define CAIRN_EINVAL ...
int cairn_stddev(const double *values, size_t n, double *out);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "fastpath._cairn_fastpath",
    '#include "cairn_fastpath.h"',
    sources=[str(HERE / "cairn_fastpath.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
    libraries=["m"],
)


def build() -> None:
    """Compile the extension next to this file, where `import fastpath` finds it."""
    ffibuilder.compile(tmpdir=str(HERE.parent), verbose=False)


if __name__ == "__main__":
    build()
