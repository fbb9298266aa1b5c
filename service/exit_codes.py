"""The exit codes of every ``scantide`` command: one small named set, the same in each command.

A project error (``ScantideError``) that ends a command maps to its code by what it means, read
from its HTTP ``status`` so that errors defined above ``service`` (EC2, storage, the conductor)
map without being listed here. docs/cli.md's two tables are written by
``python -m service.exit_codes --write docs/cli.md`` (a test keeps them current).
"""

from __future__ import annotations

from enum import IntEnum

from service.errors import ConfigError, NotSupported, ScantideError


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    INVALID = 4
    CONFLICT = 5
    UNAVAILABLE = 6
    CONFIG = 7


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "Done; for a command that waits or checks (`submit --wait`, `demo`, `validate`), what it "
                 "waited for completed or what it checked is valid.",
    ExitCode.FAILED: "The command ran and reports a failure: the task or a scan failed, the descriptor is "
                     "invalid, there was nothing to replay. Also an unexpected crash (a traceback on stderr).",
    ExitCode.USAGE: "The command line is wrong: an unknown command or option, a bad value, a file that is "
                    "not there (click's usage errors).",
    ExitCode.NOT_FOUND: "What the command names is not there: an algorithm, pipeline, run, task, scan or "
                        "model version (HTTP 404).",
    ExitCode.INVALID: "The input is refused as it is: parameters, a descriptor or a file scantide will "
                      "never accept (HTTP 400, 401, 403, 413, 415, 422, 431).",
    ExitCode.CONFLICT: "The current state refuses it: a version registered with other content, a run that "
                       "did not fail, another `scantide up` on the state dir (HTTP 409).",
    ExitCode.UNAVAILABLE: "Something scantide needs did not answer (the task store, storage, EC2, the "
                          "metadata service) or asked to slow down; the same command may work later "
                          "(HTTP 503, 429).",
    ExitCode.CONFIG: "The deployment's setup is wrong: the configuration, a missing extra, or an outside "
                     "service refusing for good (ClearML, EC2 or S3: credentials, permissions; HTTP 500, 502).",
}


def exit_code(exc: ScantideError) -> ExitCode:
    """The code a command exits with when ``exc`` ends it."""
    return exit_code_of(type(exc))


def exit_code_of(cls: type[ScantideError]) -> ExitCode:
    """The code a command exits with when an error of class ``cls`` ends it."""
    if issubclass(cls, (ConfigError, NotSupported)):
        return ExitCode.CONFIG
    status = cls.status
    if status == 404:
        return ExitCode.NOT_FOUND
    if status == 409:
        return ExitCode.CONFLICT
    if status in (429, 503):
        return ExitCode.UNAVAILABLE
    if status == 502:
        return ExitCode.CONFIG
    if 400 <= status < 500:
        return ExitCode.INVALID
    return ExitCode.FAILED  # internal_error: a bug of ours, as an unexpected crash is


def error_classes() -> list[type[ScantideError]]:
    """``ScantideError`` and every subclass imported so far, depth first."""
    out: list[type[ScantideError]] = []

    def walk(cls: type[ScantideError]) -> None:
        out.append(cls)
        for sub in cls.__subclasses__():
            walk(sub)

    walk(ScantideError)
    return out


def exit_table() -> str:
    """Each exit code with its name and meaning, as a markdown table."""
    lines = ["| exit | name | meaning |", "|---|---|---|"]
    lines += [f"| {c.value} | `{c.name.lower()}` | {MEANING[c]} |" for c in ExitCode]
    return "\n".join(lines) + "\n"


def error_table(classes: list[type[ScantideError]]) -> str:
    """Each error code of ``classes`` with the exit code it ends a command with, as a markdown table."""
    codes: dict[str, ExitCode] = {}
    for cls in classes:
        codes.setdefault(cls.code, exit_code_of(cls))
    lines = ["| error code | exit |", "|---|---|"]
    lines += [f"| `{code}` | {codes[code].value} (`{codes[code].name.lower()}`) |" for code in sorted(codes)]
    return "\n".join(lines) + "\n"


def with_tables(doc: str, classes: list[type[ScantideError]]) -> str:
    """``doc`` (docs/cli.md) with the text between its ``exit-codes`` and ``error-codes`` markers
    replaced by the tables."""
    for name, table in (("exit-codes", exit_table()), ("error-codes", error_table(classes))):
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        head, _, rest = doc.partition(start)
        _, _, tail = rest.partition(end)
        doc = f"{head}{start}{table}{end}{tail}"
    return doc


def documented_classes() -> list[type[ScantideError]]:
    """The error classes docs/cli.md lists: every one a command can end with, from each package."""
    import importlib

    # Imported by name: service never imports the packages above it, and this runs only to write docs.
    for module in ("service.storage.base", "autoscaler.providers.ec2_client", "conductor.moves",
                   "conductor.conductor", "algorithms.errors"):
        importlib.import_module(module)
    return error_classes()


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if sys.argv[1:2] == ["--write"]:  # python -m service.exit_codes --write docs/cli.md
        path = Path(sys.argv[2])
        path.write_text(with_tables(path.read_text(), documented_classes()))
    else:
        print(exit_table() + "\n" + error_table(documented_classes()), end="")
