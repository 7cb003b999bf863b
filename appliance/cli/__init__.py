"""The `cairn` command line: thin typer commands over the model, ops, fastpath and the API.

Each command group lives in its own module and registers itself here. `balance`, `capacity` and
`iallocator` first try a lean path that does not import typer or the model (see
`appliance.cli.placement`), so they start about as fast as Python itself; `app` is built on first
use.
"""

import sys

HELP = "Cairn: highly available VMs on a few commodity servers, managed through one replicated event log."


# Command groups: name -> module (each module's `app`); the others register themselves.
GROUPS = {"cluster": "cluster", "instance": "instance", "node": "node", "group": "group", "job": "job",
          "user": "user", "tags": "tags", "events": "events", "images": "images", "os": "os"}


def _build_app(only: str | None = None):
    """The typer app; with `only`, just that command group (a command imports only the modules it needs)."""
    import importlib

    import typer

    built = typer.Typer(name="cairn", help=HELP, no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False)
    for name, module in GROUPS.items():
        if only is None or only == name:
            built.add_typer(importlib.import_module(f"appliance.cli.{module}").app, name=name)
    if only is None:
        from appliance.cli import local as _local
        from appliance.cli import placement as _placement

        _placement.register(built)
        _local.register(built)
    return built


def __getattr__(name: str):
    # The typer app is built lazily (PEP 562) so that the lean placement path never imports typer.
    if name == "app":
        globals()["app"] = _build_app()
        return globals()["app"]
    raise AttributeError(f"module 'appliance.cli' has no attribute '{name}'")


def main() -> None:
    """Console-script entry point."""
    import gc

    # A placement command is one short process that leaves no cyclic garbage worth collecting;
    # the collector's passes over the parsed cluster would cost it about 2 ms.
    gc.disable()
    try:
        from appliance.cli.placement import lean_main

        code = lean_main(sys.argv[1:])
        if code is not None:
            sys.stdout.flush()
            sys.exit(code)
        gc.enable()
        group = sys.argv[1] if len(sys.argv) > 1 else None
        (_build_app(group) if group in GROUPS else __getattr__("app"))()
    except BrokenPipeError:
        # The reader went away (`cairn balance ... | head`): stop quietly with status 1 rather than a
        # traceback, and point stdout at /dev/null so that Python's final flush cannot fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
