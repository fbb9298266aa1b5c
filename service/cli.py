"""The ``scantide`` command line. It prints for people; the library code below it logs."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from service import logs
from service.algorithms_cli import algorithms_app
from service.backends import open_backend
from service.clearml_cli import clearml_app, parse_params
from service.cli_json import print_json
from service.console import follow
from service.domain import JobState, ScanRequest
from service.errors import ScantideError, invalid_input
from service.exit_codes import ExitCode, exit_code
from service.pipelines_cli import pipelines_app, runs_app
from service.settings import Settings, load_settings, with_local_token
from service.status_cli import status

app = typer.Typer(no_args_is_help=True, help="scantide: analyse uploaded video scans on autoscaled workers.")
app.add_typer(clearml_app, name="clearml")
app.add_typer(algorithms_app, name="algorithms")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(runs_app, name="runs")
console = Console()
err_console = Console(stderr=True)
log = logging.getLogger("scantide")


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


@app.callback()
def root(
    ctx: typer.Context,
    state_dir: Optional[Path] = typer.Option(None, help="State directory (default SCANTIDE_STATE_DIR or ./.scantide)."),
    log_level: Optional[str] = typer.Option(None, help="Log level (default SCANTIDE_LOG_LEVEL or INFO)."),
) -> None:
    os.umask(0o077)  # the store, tokens, logs and outputs: this user's alone (0700 folders, 0600 files)
    overrides: dict[str, object] = {"state_dir": state_dir} if state_dir else {}
    if log_level:
        overrides["log_level"] = log_level  # in the settings: `up` hands them to every process it starts
    ctx.obj = load_settings(**overrides)
    logs.configure(ctx.obj.log_level, ctx.obj.log_format, service=ctx.invoked_subcommand)
    private(ctx.obj.state_dir)


def tell(text: str) -> None:
    """A word for the person who started a command, on stderr: a log line when the logs are JSON."""
    if logs.is_json():
        log.info("%s", text)
    else:
        err_console.print(text)


def private(folder: Path) -> None:
    """Make an existing state dir this user's alone, as the umask makes every new one."""
    try:
        if folder.is_dir() and folder.stat().st_uid == os.getuid() and folder.stat().st_mode & 0o077:
            folder.chmod(0o700)
    except OSError:
        pass


@app.command()
def up(
    ctx: typer.Context,
    workers: Optional[int] = typer.Option(None, help="Most workers at once (default SCANTIDE_WORKERS)."),
    fixed: bool = typer.Option(False, "--fixed", help="Keep that many workers running instead of autoscaling."),
) -> None:
    """Run the API, the monitor, the conductor and the autoscaler (which starts workers on demand, from zero)."""
    from service.supervisor import Child, Supervisor, cli_argv, end_leftovers, lock_state_dir

    settings = with_local_token(_settings(ctx))
    lock = lock_state_dir(settings.state_dir)  # noqa: F841 - held until this process ends
    if ended := end_leftovers(settings.state_dir):
        tell(f"scantide up: ended {len(ended)} process(es) a killed scantide up left running on "
             f"{settings.state_dir}")
    if workers is not None:
        settings = settings.model_copy(update={"workers": workers})
    children = [Child("api", cli_argv("api")), Child("monitor", cli_argv("monitor")),
                Child("conductor", cli_argv("conductor"))]
    if fixed:
        q = settings.default_queue
        children += [Child(f"worker-{i}", cli_argv("worker", "--queue", q)) for i in range(settings.workers)]
        fleet = f"{settings.workers} fixed worker(s) on queue {q!r}"
    else:
        children.append(Child("autoscaler", cli_argv("autoscaler")))
        fleet = f"autoscaler (0 to {settings.workers} workers)"
    token_at = settings.token_file if settings.token_file.exists() else "SCANTIDE_API_TOKENS"
    tell(f"scantide up: API on http://{settings.api_host}:{settings.api_port} (docs at /docs), "
         f"monitor, conductor, {fleet}; API token in {token_at}")
    raise typer.Exit(Supervisor(settings, open_backend(settings), children).run())


@app.command(hidden=True)
def api(ctx: typer.Context, access_log: bool = typer.Option(True, help="Log each request.")) -> None:
    """Serve the HTTP API (normally started by `scantide up`)."""
    import uvicorn

    from service.api import create_app
    from service.api.server import server_options

    settings = _settings(ctx)
    if not settings.api_tokens:
        err_console.print("refusing to serve the API without tokens: set SCANTIDE_API_TOKENS or use `scantide up`")
        raise typer.Exit(ExitCode.CONFIG)
    # Our logging configuration, not uvicorn's: its error and access lines in our format, with the request id.
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, access_log=access_log,
                log_config=logs.log_config(settings.log_level, settings.log_format, service="api"), **server_options())


@app.command()
def worker(
    ctx: typer.Context,
    queue: Optional[str] = typer.Option(None, help="Queue to serve (default SCANTIDE_DEFAULT_QUEUE)."),
    max_tasks: Optional[int] = typer.Option(None, help="Exit after this many tasks."),
    worker_id: Optional[str] = typer.Option(None, help="Register under this id (the autoscaler's instance id)."),
    slots: Optional[int] = typer.Option(None, min=1, max=64,
                                        help="Tasks run at once (default SCANTIDE_WORKER_SLOTS); slot k registers as "
                                             "<id>:<k> when there are several."),
) -> None:
    """Claim and run tasks from a queue until SIGTERM (which drains)."""
    from service.metrics import serve_port
    from service.worker import Worker

    settings = _settings(ctx)
    serve_port(settings, "worker")
    w = Worker(open_backend(settings), settings, queue or settings.default_queue, worker_id=worker_id, slots=slots)
    w.install_signal_handlers()
    raise typer.Exit(w.run(max_tasks=max_tasks))


@app.command()
def submit(
    ctx: typer.Context,
    scan: str = typer.Argument(..., help="A local video file, or an s3:// / https:// URI."),
    scan_id: Optional[str] = typer.Option(None, help="Scan id (default: the file name without extension)."),
    algorithm: Optional[str] = typer.Option(None, help="Algorithm (default SCANTIDE_DEFAULT_ALGORITHM)."),
    param: Optional[list[str]] = typer.Option(None, "--param", metavar="KEY=VALUE",
                                              help="Algorithm parameter (JSON values); repeatable."),
    wait: bool = typer.Option(False, "--wait", help="Follow the task with a progress bar until it ends."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's Submitted body (with --wait: the ended "
                                                        "task, as GET /v1/tasks/ID) on stdout (docs/cli.md)."),
) -> None:
    """Enqueue one scan. Local files outside the data root are copied into <data_root>/uploads."""
    from service.enqueue import submission_body, submit_scan

    settings = _settings(ctx)
    backend = open_backend(settings)
    uri = scan
    if "://" not in scan:
        path = Path(scan).expanduser().resolve()
        if not path.is_file():
            err_console.print(f"[red]no such file: {escape(str(path))}[/red]")
            raise typer.Exit(ExitCode.USAGE)
        root = settings.data_root.resolve()  # type: ignore[union-attr]
        if not path.is_relative_to(root):
            dest = root / "uploads" / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            path = dest
        uri = str(path)
    sid = scan_id or Path(scan.rstrip("/")).stem
    try:
        request = ScanRequest(scan_id=sid, scan_uri=uri, algorithm=algorithm, params=parse_params(param or []) or None)
    except ValidationError as exc:
        raise invalid_input(exc.errors()) from None  # as the API answers it: invalid_request, naming the field
    submission = submit_scan(backend, settings, request)
    task = submission.task
    if as_json and not wait:
        from service.api.schemas import Submitted

        print_json(Submitted, submission_body(submission))
        return
    if not as_json:
        what = "queued" if submission.created else "already submitted"
        console.print(f"{what}: scan {task.scan_id} → task {task.task_id} ({task.state.value})")
    if wait:
        task = follow([task.task_id], backend.get_task, err_console if as_json else console)[0]
        if as_json:
            from service.api.schemas import Task
            from service.enqueue import task_links

            print_json(Task, {**task.to_dict(), "links": task_links(task)})
        raise typer.Exit(ExitCode.OK if task.state is JobState.completed else ExitCode.FAILED)


app.command()(status)


@app.command()
def demo(
    ctx: typer.Context,
    scans: int = typer.Option(3, min=1, max=20, help="Synthetic scans to analyse."),
    workers: int = typer.Option(2, min=1, max=8, help="Worker processes."),
    timeout_s: float = typer.Option(600.0, help="Give up after this many seconds."),
) -> None:
    """Write synthetic scans, start everything, submit them over HTTP and show the results."""
    from service.demo import run_demo

    ok = run_demo(_settings(ctx), console, scans=scans, workers=workers, timeout_s=timeout_s)
    raise typer.Exit(ExitCode.OK if ok else ExitCode.FAILED)


def load_plugins(typer_app: typer.Typer = app) -> None:
    """Commands of the packages above service/ (monitor, autoscaler), via the scantide.cli entry points."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="scantide.cli"):
        ep.load()(typer_app)


def main() -> None:
    load_plugins()
    try:
        app(prog_name="scantide")  # also names the completion variable: _SCANTIDE_COMPLETE
    except ScantideError as exc:
        if logs.is_json():
            log.error("command_failed code=%s message=%s", exc.code, exc.message)
        else:
            err_console.print(f"[red]{exc.code}[/red]: {escape(exc.message)}")
        sys.exit(exit_code(exc))


if __name__ == "__main__":
    main()
