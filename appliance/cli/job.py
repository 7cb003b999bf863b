"""`cairn job ...` (list, info, watch, wait, cancel), and what every command that calls the cluster shares.

A command that calls the cluster is declared with `command(app, kind=...)`:
it gets the options they all share (`--api`, `--config`; `--stale` on reads;
`--reason` and `--submit` on writes; `-o`, `--separator`, `--no-headers`,
`--units` and `--output` on lists) and a `Session`, and the client's errors
become Ganeti's texts and exit codes (1 for a failure, 14 for an unknown list
field; typer gives 2 for usage). A write submits one job and then either
prints `JobID: N` (`--submit`) or follows the job, progress on stderr.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import typing
from typing import Optional

import typer

from appliance.cli import output as out
from appliance.client import jobs
from appliance.client.config import ConfigError, resolve_target
from appliance.client.http import ApiError, Client, StreamBroken, Unreachable

app = typer.Typer(help="Jobs: list, show, follow, wait for and cancel them.", no_args_is_help=True)


class Failed(Exception):
    """The command stops: `text` goes to stderr as it is, and the process exits with `code`."""

    def __init__(self, text: str, code: int = 1) -> None:
        super().__init__(text)
        self.text, self.code = text, code


class ListStyle:
    """How a list is printed: fields, separator, headers, units and text or JSON."""

    __slots__ = ("fields", "separator", "headers", "units", "output")

    def __init__(self, fields, separator, headers, units, output) -> None:
        self.fields, self.separator, self.headers, self.units, self.output = fields, separator, headers, units, output


class Session:
    """One command's link to the cluster: the client (made on first use) and the shared options."""

    def __init__(self, api: str | None = None, config: str | None = None, stale: bool = False,
                 reason: str | None = None, submit: bool = False, style: ListStyle | None = None,
                 output: str = "text") -> None:
        self.api, self.config, self.stale, self.reason, self.submit = api, config, stale, reason or "", submit
        self.style, self.output = style, (style.output if style else output)
        self._client: Client | None = None
        self.config_path: str | None = None  # known once the client is made

    @property
    def client(self) -> Client:
        if self._client is None:
            target = resolve_target(self.api, self.config)
            self.config_path = target.config_path
            try:
                self._client = Client(target.addresses, target.ca_pem, target.token, target.socket_path)
            except ValueError as error:
                raise ConfigError(f"{target.config_path or 'the client config'}: {error}") from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def read(self, path: str, **query):
        """The JSON answer of GET `path` (with ?stale=1 when --stale was given)."""
        if self.stale:
            query["stale"] = True
        return self.client.get(path, **query)[1]

    def submit_job(self, operations: list[dict]) -> int:
        """Submit one job with the session's reason; its id."""
        try:
            return jobs.submit(self.client, operations, self.reason)
        except Unreachable as error:
            # A node may have committed the job and then gone away before answering.
            raise Failed(f"{api_error_text(error, self)}. The job may or may not have been submitted; "
                         "'cairn job list' shows it if it was") from None

    def follow(self, job_id: int) -> dict:
        """Follow a job to its end, progress lines on stderr; the final row."""
        typer.echo(f"Waiting for job {job_id} ...", err=True)
        try:
            return jobs.follow(self.client, job_id, lambda ts, message: typer.echo(out.log_line(ts, message), err=True))
        except ApiError as error:
            raise Failed(f"cairn: lost track of job {job_id} ({error.message}); the job goes on in the cluster: "
                         f"follow it with 'cairn job watch {job_id}'") from None
        except KeyboardInterrupt:
            raise Failed(f"cairn: stopped following job {job_id}; the job goes on in the cluster: follow it with "
                         f"'cairn job watch {job_id}' or cancel it with 'cairn job cancel {job_id}'", 130) from None

    def run(self, operations: list[dict]) -> dict | None:
        """Submit a job; print `JobID: N` with --submit, else follow it and print its results (Failed if it fails)."""
        job_id = self.submit_job(operations)
        if self.submit:
            typer.echo(f"JobID: {job_id}")
            return None
        row = self.follow(job_id)
        if row.get("status") != "success":
            raise Failed(out.job_failure_text(row))
        for line in out.result_lines(row.get("opresult")):
            typer.echo(line)
        return row

    def show_list(self, kind: str, path: str, names: list[str] | None, key: str = "name", rows=None) -> None:
        """Print a Ganeti list of `kind` read from `path` (rows of `names` in argument order, else all)."""
        style = self.style
        fields = out.select_fields(kind, style.fields)
        if rows is None:
            rows = self.read(path, **({"names": ",".join(names)} if names else {}))
        rows = out.pick(kind, rows, names, key)
        if style.output == "json":
            typer.echo(out.json_rows(kind, rows, fields if style.fields else None))
        else:
            for line in out.table(kind, rows, fields, style.separator, style.headers, style.units):
                typer.echo(line)
        unknown = out.unknown_fields(kind, fields)
        if unknown:
            typer.echo(f"Warning: Queried for unknown fields {', '.join(unknown)}", err=True)
            raise Failed("", 14)

    def show_object(self, document, lines) -> None:
        """Print an object: as JSON with --output json, else the given text lines."""
        if self.output == "json":
            typer.echo(json.dumps(document, indent=2))
        else:
            for line in lines:
                typer.echo(line)


def api_error_text(error: ApiError, session: Session) -> str:
    """What to tell the user about an error answer (or no answer) of the cluster."""
    where = session.config_path or "the client config"
    if error.status == 401:
        return (f"cairn: the cluster did not accept the API token ({error.message}); check CAIRN_TOKEN or the "
                f"token in {where}, or ask an admin for a token ('cairn user add')")
    if isinstance(error, Unreachable):
        return (f"cairn: {error.message}; check that the cairn daemons run ('cairn up' starts them) and that "
                f"{where} names their API addresses")
    if error.code in out.PREREQ_CODES:
        return out.failure_text(error.code, error.message)
    return f"cairn: the cluster answered {error.status} {error.code}: {error.message}"


@contextlib.contextmanager
def reporting(session: Session):
    """Turn what stops a command into its message on stderr and exit code; close the session's connections."""
    try:
        yield
    except Failed as failure:
        if failure.text:
            typer.echo(failure.text, err=True)
        raise typer.Exit(failure.code) from None
    except ConfigError as error:
        typer.echo(f"cairn: {error}", err=True)
        raise typer.Exit(1) from None
    except ApiError as error:
        typer.echo(api_error_text(error, session), err=True)
        raise typer.Exit(1) from None
    except StreamBroken as error:
        typer.echo(f"cairn: the answer broke off: {error}", err=True)
        raise typer.Exit(1) from None
    except out.NotFound as error:
        typer.echo(out.failure_text("unknown_entity", error.message), err=True)
        raise typer.Exit(1) from None
    finally:
        session.close()


# -- the shared options


SHARED_HELP = {
    "api": "Call this node (HOST:PORT, or unix:PATH for a local socket) instead of the config's nodes; also CAIRN_API.",
    "config": "Client config file (default: $CAIRN_CONFIG, else ~/.config/cairn/client.toml).",
    "stale": "Answer from the node's own state at once, without waiting to catch up with the leader.",
    "output": "text for people, json for scripts.",
    "fields": "Fields to show, comma-separated; '+f1,f2' adds them to the defaults.",
    "separator": "Join cells with this text, no padding (sizes then default to MiB).",
    "no_headers": "Leave out the header line.",
    "units": "Sizes: h (human-readable, 23.5G), m (MiB), g or t.",
    "list_output": "text (Ganeti's table) or json (an array of rows).",
    "reason": "Why: recorded with the job and its events.",
    "submit": "Print 'JobID: N' and return at once instead of following the job.",
}


def _common(kind: str) -> list[tuple[str, object, object]]:
    """(name, annotation, typer option) of the options every command of `kind` has."""
    options = [("api", Optional[str], typer.Option(None, "--api", help=SHARED_HELP["api"])),
               ("config", Optional[str], typer.Option(None, "--config", help=SHARED_HELP["config"]))]
    if kind in ("read", "list"):
        options.append(("stale", bool, typer.Option(False, "--stale", help=SHARED_HELP["stale"])))
    if kind == "read":
        options.append(("output", str, typer.Option("text", "--output", help=SHARED_HELP["output"])))
    if kind == "list":
        options += [
            ("fields", Optional[str], typer.Option(None, "-o", "--fields", help=SHARED_HELP["fields"])),
            ("separator", Optional[str], typer.Option(None, "--separator", help=SHARED_HELP["separator"])),
            ("no_headers", bool, typer.Option(False, "--no-headers", help=SHARED_HELP["no_headers"])),
            ("units", Optional[str], typer.Option(None, "--units", help=SHARED_HELP["units"])),
            ("output", str, typer.Option("text", "--output", help=SHARED_HELP["list_output"])),
        ]
    if kind == "write":
        options += [("reason", Optional[str], typer.Option(None, "--reason", help=SHARED_HELP["reason"])),
                    ("submit", bool, typer.Option(False, "--submit", help=SHARED_HELP["submit"]))]
    return options


def _session(kind: str, values: dict) -> Session:
    output = values.pop("output") if kind in ("read", "list") else "text"
    if output not in ("text", "json"):
        raise typer.BadParameter(f"'{output}' is not text or json", param_hint="--output")
    style = None
    if kind == "list":
        units = values.pop("units")
        if units is not None and units not in out.UNITS:
            raise typer.BadParameter(f"'{units}' is not one of {', '.join(out.UNITS)}", param_hint="--units")
        style = ListStyle(values.pop("fields"), values.pop("separator"), not values.pop("no_headers"), units, output)
    return Session(values.pop("api"), values.pop("config"), values.pop("stale", False), values.pop("reason", None),
                   values.pop("submit", False), style, output)


def command(app_: typer.Typer, name: str | None = None, kind: str = "read"):
    """Register `function(session, ...)` as a command of `app_`, with the shared options of `kind` after its
    own (plain: --api and --config only; read, list or write) and the client's errors turned into exit codes."""
    def register(function):
        hints = typing.get_type_hints(function)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in list(inspect.signature(function).parameters.values())[1:]]
        shared = _common(kind)
        parameters = own + [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
                            for n, a, d in shared]

        def run(**values) -> None:
            session = _session(kind, values)
            with reporting(session):
                function(session, **values)

        run.__signature__ = inspect.Signature(parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        run.__doc__ = function.__doc__
        run.__name__ = function.__name__
        app_.command(name=name or function.__name__.replace("_", "-"))(run)
        return function

    return register


def parameter_error(message: str) -> Failed:
    """Ganeti's client-side parameter error (exit 1)."""
    return Failed(f"Parameter Error: {message}")


# -- the job commands


STATUS_FILTERS = {"pending": ("queued", "waiting"), "running": ("running", "canceling"), "error": ("error",),
                  "finished": ("success", "error", "canceled")}


@command(app, name="list", kind="list")
def list_jobs(
    session: Session,
    ids: Optional[list[int]] = typer.Argument(None, help="Only these jobs, in this order."),
    pending: bool = typer.Option(False, "--pending", help="Only queued and waiting jobs."),
    running: bool = typer.Option(False, "--running", help="Only running jobs."),
    error: bool = typer.Option(False, "--error", help="Only failed jobs."),
    finished: bool = typer.Option(False, "--finished", help="Only finished jobs (success, error, canceled)."),
) -> None:
    """List jobs: ID, status and summary (Ganeti's opcode names). Status filters combine."""
    rows = session.read("/api/v1/jobs")
    wanted = {status for flag, name in ((pending, "pending"), (running, "running"), (error, "error"),
                                        (finished, "finished")) if flag for status in STATUS_FILTERS[name]}
    if wanted:
        rows = [row for row in rows if row.get("status") in wanted]
    session.show_list("job", "", [str(i) for i in ids] if ids else None, key="id", rows=rows)


@command(app, name="info")
def job_info(session: Session, job_id: int = typer.Argument(..., metavar="ID", help="The job.")) -> None:
    """Show a job: status, times, each operation with its input and result, and its log."""
    row = session.read(jobs.job_path(job_id))
    session.show_object(row, out.job_info(row))


@command(app, name="watch", kind="plain")
def job_watch(session: Session, job_id: int = typer.Argument(..., metavar="ID", help="The job.")) -> None:
    """Follow a job's log on stdout until it ends; exit 1 if it fails."""
    typer.echo(f"Output from job {job_id} follows")
    typer.echo("-----------------------------------------------")
    row = jobs.follow(session.client, job_id, lambda ts, message: typer.echo(out.log_line(ts, message)))
    if row.get("status") != "success":
        raise Failed(out.job_failure_text(row))


@command(app, name="wait", kind="plain")
def job_wait(session: Session, job_id: int = typer.Argument(..., metavar="ID", help="The job.")) -> None:
    """Wait until a job ends and print its results; exit 1 if it failed."""
    row = jobs.wait(session.client, job_id)
    if row.get("status") != "success":
        raise Failed(f"Job {job_id} failed: {out.job_failure_text(row)}")
    for line in out.result_lines(row.get("opresult")):
        typer.echo(line)


@command(app, name="cancel", kind="plain")
def job_cancel(session: Session, job_id: int = typer.Argument(..., metavar="ID", help="The job.")) -> None:
    """Ask the cluster to cancel a job (a queued or waiting job stops; a finished one cannot be canceled)."""
    session.client.post(jobs.job_path(job_id, "cancel"), {})
    typer.echo(f"Cancel of job {job_id} requested")
