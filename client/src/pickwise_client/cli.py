"""The ``pickwise`` command line, on the Python client.

Data goes to stdout (a table, or JSON with ``--json``); progress bars and messages go to stderr.
Exit codes (``EXIT_CODES``) let a shell script tell failures apart.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer

from pickwise_client import config
from pickwise_client._runs import metrics_line
from pickwise_client.client import Client, __version__, obtain_token
from pickwise_client.errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    JobFailedError,
    NetworkError,
    NotFoundError,
    NotLoggedInError,
    PermissionDeniedError,
    PickwiseError,
    WaitTimeoutError,
)
from pickwise_client.types import EXPORT_FORMATS


class ExitCode(IntEnum):
    OK = 0
    API_ERROR = 1  # the server refused the request (400 naming the field) or failed (5xx)
    USAGE = 2  # bad options or arguments, an unreadable local file
    AUTH = 3  # not logged in, wrong or revoked token (401), login refused
    NOT_FOUND = 4  # no such project, export, run... or one you may not see (404)
    PERMISSION = 5  # your role in the project does not allow it (403)
    JOB_FAILED = 6  # the export or run you waited for failed or was cancelled
    TIMEOUT = 7  # --timeout passed before it finished (it keeps going on the server)
    UNREACHABLE = 8  # the server could not be reached, or did not answer in time
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 API error (400 validation, 5xx); 2 usage; 3 not logged in or token refused (401); "
    "4 not found (404); 5 permission denied (403); 6 the export or run failed or was cancelled; "
    "7 --timeout passed; 8 server unreachable; 130 interrupted."
)

app = typer.Typer(
    help="Script Pickwise: projects, prompts, annotations, exports and training runs.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
projects_app = typer.Typer(help="Projects you belong to.", no_args_is_help=True)
prompts_app = typer.Typer(help="Prompt sets: import prompts as tasks.", no_args_is_help=True)
tasks_app = typer.Typer(help="A project's tasks.", no_args_is_help=True)
annotations_app = typer.Typer(help="A project's annotations.", no_args_is_help=True)
templates_app = typer.Typer(help="Annotation templates (project admins).", no_args_is_help=True)
models_app = typer.Typer(help="Model versions offered for generation.", no_args_is_help=True)
exports_app = typer.Typer(help="Preference exports (see also `pickwise export`).", no_args_is_help=True)
train_app = typer.Typer(help="Start reward-model and fine-tune runs.", no_args_is_help=True)
runs_app = typer.Typer(help="Reward-model and fine-tune runs: list, watch, cancel, retry.", no_args_is_help=True)
members_app = typer.Typer(help="A project's members and their roles (project admins).", no_args_is_help=True)
arena_app = typer.Typer(help="A blind arena's results (ML engineers and project admins).", no_args_is_help=True)
webhooks_app = typer.Typer(help="A project's webhooks (project admins): endpoints and what was sent to them.",
                           no_args_is_help=True)
for sub, name in ((projects_app, "projects"), (members_app, "members"), (prompts_app, "prompts"),
                  (tasks_app, "tasks"), (annotations_app, "annotations"), (templates_app, "templates"),
                  (models_app, "models"), (exports_app, "exports"), (train_app, "train"), (runs_app, "runs"),
                  (arena_app, "arena"), (webhooks_app, "webhooks")):
    app.add_typer(sub, name=name)


@dataclass
class Settings:
    url: str | None = None
    token: str | None = None
    timeout: float = 30.0
    retries: int = 4
    quiet: bool = False
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, self.token, timeout=self.timeout, max_retries=self.retries)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


SETTINGS = Settings()

P = ParamSpec("P")
T = TypeVar("T")


def fail(message: str, code: ExitCode, details: Sequence[str] = ()) -> NoReturn:
    typer.echo(f"pickwise: error: {message}", err=True)
    for line in details:
        typer.echo(f"  {line}", err=True)
    raise typer.Exit(int(code))


def handled(function: Callable[P, T]) -> Callable[P, T]:
    """Turn the client's errors into a message on stderr and the documented exit code."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return function(*args, **kwargs)
        except APIError as exc:
            details = [str(error) for error in exc.errors] if len(exc.errors) > 1 else []
            code = {AuthenticationError: ExitCode.AUTH, NotFoundError: ExitCode.NOT_FOUND,
                    PermissionDeniedError: ExitCode.PERMISSION}.get(type(exc), ExitCode.API_ERROR)
            fail(str(exc), code, details)
        except NotLoggedInError as exc:
            fail(str(exc), ExitCode.AUTH)
        except ConfigurationError as exc:
            fail(str(exc), ExitCode.USAGE)
        except JobFailedError as exc:
            fail(str(exc), ExitCode.JOB_FAILED)
        except WaitTimeoutError as exc:
            fail(str(exc), ExitCode.TIMEOUT)
        except NetworkError as exc:
            fail(str(exc), ExitCode.UNREACHABLE)
        except PickwiseError as exc:
            fail(str(exc), ExitCode.API_ERROR)
        except OSError as exc:  # a local file: unreadable input, an output folder that is not there
            fail(str(exc), ExitCode.USAGE)
        except KeyboardInterrupt:
            fail("interrupted (an export or run you were waiting for goes on on the server)", ExitCode.INTERRUPTED)

    return wrapper


# --- output ------------------------------------------------------------------------------------

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ProjectOption = Annotated[int, typer.Option("--project", "-p", help="Project id.")]


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = str(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[tuple[str, Callable[[Any], Any]]],
                *, as_json: bool) -> None:
    """Rows as JSON (every field) or as an aligned table of ``columns`` (heading, getter)."""
    rows = list(rows)
    if as_json:
        print_json(rows)
        return
    cells = [[heading.upper() for heading, _ in columns]]
    cells += [[_cell(getter(row)) for _, getter in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _key(name: str) -> Callable[[Any], Any]:
    return lambda row: row.get(name)


def _date(name: str) -> Callable[[Any], Any]:
    return lambda row: (row.get(name) or "")[:19].replace("T", " ")


def say(message: str) -> None:
    """A message for people (stderr, so stdout stays data)."""
    if not SETTINGS.quiet:
        typer.echo(message, err=True)


def parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``--set key=value`` pairs; values are read as JSON (numbers, true/false, lists) or kept as text."""
    values: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--set {pair!r}: write it as key=value (for example max_steps=200).", ExitCode.USAGE)
        try:
            values[key.strip()] = json.loads(raw)
        except ValueError:
            values[key.strip()] = raw
    return values


# --- global options and login -------------------------------------------------------------------


def _version(value: bool) -> None:
    if value:
        typer.echo(f"pickwise {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    context: typer.Context,
    url: Annotated[str | None, typer.Option(help="Server URL; default: $PICKWISE_URL, else the one you "
                                                 "logged in to.")] = None,
    token: Annotated[str | None, typer.Option(help="API token; default: $PICKWISE_TOKEN, else the saved one.",
                                              show_default=False)] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each answer from the server.")] = 30.0,
    retries: Annotated[int, typer.Option(min=0, help="Retries of a read (or a call safe to repeat) on 429/503 or "
                                                     "a refused connection, with exponential backoff.")] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or messages on stderr.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    SETTINGS.close()
    SETTINGS.url, SETTINGS.token, SETTINGS.timeout, SETTINGS.retries, SETTINGS.quiet = (
        url, token, timeout, retries, quiet)
    context.call_on_close(SETTINGS.close)


@app.command()
@handled
def login(
    url: Annotated[str | None, typer.Option(help="Server URL, e.g. http://127.0.0.1:8000 "
                                                 "(default: $PICKWISE_URL or the saved one).")] = None,
    username: Annotated[str | None, typer.Option("--username", "-u", help="Prompted for when left out.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin "
                                                                         "(for scripts).")] = False,
    token: Annotated[str | None, typer.Option(help="Save this API token instead of logging in with a "
                                                   "password.", show_default=False)] = None,
) -> None:
    """Log in and save the server URL and API token to the config file (readable by you only)."""
    saved = config.load_saved()
    chosen = url or SETTINGS.url or os.environ.get(config.ENV_URL) or (saved.url if saved else None)
    if not chosen:
        fail("Give the server URL: pickwise login --url http://127.0.0.1:8000", ExitCode.USAGE)
    chosen = config.normalize_url(chosen)
    token = token or SETTINGS.token
    if not token:
        username = username or typer.prompt("Username")
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = typer.prompt("Password", hide_input=True)
        token = obtain_token(chosen, username, password, timeout=SETTINGS.timeout)
    with Client(chosen, token, timeout=SETTINGS.timeout) as client:
        me = client.me()  # checks the token, and names its user
    path = config.save(config.Credentials(url=chosen, token=token, username=me["username"]))
    say(f"Logged in to {chosen} as {me['username']}; the token is saved in {path} (mode 0600).")
    if os.environ.get(config.ENV_TOKEN):
        say(f"Note: ${config.ENV_TOKEN} is set and takes precedence over the saved token.")


@app.command()
@handled
def logout() -> None:
    """Forget the saved token (the server keeps it valid; an admin can revoke it)."""
    if config.forget():
        say(f"Removed {config.config_path()}.")
    else:
        say("No saved login.")


@app.command()
@handled
def whoami(as_json: JsonOption = False) -> None:
    """Who the token belongs to, and on which server."""
    client = SETTINGS.client()
    me = client.me()
    if as_json:
        print_json({**me, "url": client.url})
    else:
        typer.echo(f"{me['username']} on {client.url} (roles: {', '.join(me['roles']) or 'none'})")


# --- projects, prompts, tasks, annotations -------------------------------------------------------


@projects_app.command("list")
@handled
def projects_list(as_json: JsonOption = False) -> None:
    """Every project you belong to."""
    print_table(SETTINGS.client().projects.list(), [
        ("id", _key("id")), ("name", _key("name")), ("role", _key("role")),
        ("archived", lambda p: p.get("archived_at") is not None), ("created", _date("created_at"))],
        as_json=as_json)


@projects_app.command("show")
@handled
def projects_show(project: Annotated[int, typer.Argument(help="Project id.")]) -> None:
    """A project and its workflow settings, as JSON."""
    client = SETTINGS.client()
    print_json({**client.projects.get(project), "settings": client.projects.settings(project)})


@projects_app.command("create")
@handled
def projects_create(name: str, description: Annotated[str, typer.Option(help="What it is for.")] = "",
                    as_json: JsonOption = False) -> None:
    """Create a project (project admins); prints its id."""
    project = SETTINGS.client().projects.create(name, description=description)
    if as_json:
        print_json(project)
    else:
        typer.echo(project["id"])


class MemberRole(StrEnum):
    admin = "admin"
    annotator = "annotator"
    ml_engineer = "ml_engineer"


UsernameArgument = Annotated[str, typer.Argument(help="The member's username.")]


@members_app.command("list")
@handled
def members_list(project: ProjectOption, as_json: JsonOption = False) -> None:
    """A project's members and their roles, admins first."""
    print_table(SETTINGS.client().members.list(project), [
        ("user id", _key("user_id")), ("username", _key("username")), ("role", _key("role"))], as_json=as_json)


@members_app.command("set")
@handled
def members_set(username: UsernameArgument,
                role: Annotated[MemberRole, typer.Argument(help="admin, annotator or ml_engineer.")],
                project: ProjectOption, as_json: JsonOption = False) -> None:
    """Add a user to a project in a role, or change their role. Their global role must allow it (exit 1,
    naming the role, otherwise), and the last admin stays an admin."""
    member = SETTINGS.client().members.set(project, username, role.value)
    if as_json:
        print_json(member)
    else:
        say(f"{member['username']} is {member['role']} in project {project}.")


@members_app.command("remove")
@handled
def members_remove(username: UsernameArgument, project: ProjectOption) -> None:
    """Take a user out of a project (their annotations stay); never the last admin."""
    SETTINGS.client().members.remove(project, username)
    say(f"Removed {username} from project {project}.")


@arena_app.command("results")
@handled
def arena_results(project: ProjectOption, as_json: JsonOption = False) -> None:
    """The arena's leaderboard (Bradley-Terry strength, best first) and head-to-head win rates."""
    results = SETTINGS.client().arena.results(project)
    if as_json:
        print_json(results)
        return
    print_table(results["leaderboard"], [
        ("version", _key("model_version")), ("strength", lambda r: f"{r['strength']:.3f}"),
        ("wins", _key("wins")), ("losses", _key("losses")), ("ties", _key("ties"))], as_json=False)
    typer.echo("")
    print_table(results["head_to_head"], [
        ("a", _key("a")), ("b", _key("b")), ("a wins", _key("a_wins")), ("b wins", _key("b_wins")),
        ("ties", _key("ties")), ("win rate", lambda r: f"{r['win_rate']:.3f}"),
        ("95% interval", lambda r: f"{r['ci_low']:.3f}-{r['ci_high']:.3f}")], as_json=False)


@prompts_app.command("import")
@handled
def prompts_import(
    file: Annotated[Path, typer.Argument(help="A .csv (prompt column), .jsonl or .txt file.")],
    project: ProjectOption,
    name: Annotated[str, typer.Option(help="Name of the prompt set (default: the file name).")] = "",
    format: Annotated[str | None, typer.Option(help="csv, jsonl or txt (default: from the extension).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Import a prompt file into a project; every new prompt becomes a task. A file with any error
    imports nothing, and each error names its line."""
    if not file.is_file():
        fail(f"No file {str(file)!r}.", ExitCode.USAGE)
    report = SETTINGS.client().prompt_sets.upload(project, file, name=name, format=format)
    if as_json:
        print_json(report)
        return
    skipped = len(report["duplicates"])
    typer.echo(f"Imported {report['created']} prompts into prompt set {report['prompt_set']}"
               + (f" ({skipped} duplicates skipped)." if skipped else "."))


@prompts_app.command("list")
@handled
def prompts_list(project: ProjectOption, as_json: JsonOption = False) -> None:
    """A project's prompt sets."""
    print_table(SETTINGS.client().prompt_sets.list(project), [
        ("id", _key("id")), ("name", _key("name")), ("format", _key("source_format")),
        ("prompts", _key("prompt_count")), ("duplicates", _key("duplicate_count")), ("by", _key("created_by")),
        ("created", _date("created_at"))], as_json=as_json)


@tasks_app.command("list")
@handled
def tasks_list(
    project: ProjectOption,
    is_open: Annotated[bool | None, typer.Option("--open/--closed", help="Only open (or closed) tasks.",
                                                 show_default=False)] = None,
    as_json: JsonOption = False,
) -> None:
    """A project's tasks (reviewers and admins)."""
    print_table(SETTINGS.client().tasks.list(project, is_open=is_open), [
        ("id", _key("id")), ("prompt", _key("prompt")), ("images", lambda t: len(t.get("images", []))),
        ("submitted", _key("submitted_count")), ("open", _key("is_open")), ("gold", _key("is_gold"))],
        as_json=as_json)


@tasks_app.command("import")
@handled
def tasks_import(
    table: Annotated[Path, typer.Argument(help="A .csv, .jsonl or .parquet table, or a Hugging Face dataset folder.")],
    project: ProjectOption,
    images: Annotated[Path | None, typer.Option(help="A folder of the images the table names, or a .zip of them.")]
    = None,
    name: Annotated[str, typer.Option(help="Name of the prompt set (default: the file name).")] = "",
    key_column: Annotated[str, typer.Option(help="The column of each task's own key.")] = "",
    deduplicate: Annotated[bool, typer.Option(help="Skip rows whose prompt is repeated.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Check every row and image; write nothing.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create tasks with images you already have (project admins); waits with a progress bar. Every bad row is
    listed with its line and column, and then nothing is imported (exit 1)."""
    if not table.exists():
        fail(f"No file or folder {str(table)!r}.", ExitCode.USAGE)
    if images is not None and not images.exists():
        fail(f"No folder or zip {str(images)!r}.", ExitCode.USAGE)
    is_zip = images is not None and images.suffix.lower() == ".zip"
    result = SETTINGS.client().imports.create(
        project, table, images=images if images is not None and not is_zip else None,
        images_zip=images if is_zip else None, name=name, key_column=key_column, deduplicate=deduplicate,
        dry_run=dry_run, progress=not SETTINGS.quiet)
    if as_json:
        print_json(result)
    report = result["report"]
    for error in report.get("errors", []):
        where = f"line {error['line']}" if error["line"] else "table"
        typer.echo(f"{where}{' [' + error['column'] + ']' if error['column'] else ''}: {error['message']}", err=True)
    if result["status"] != "succeeded":
        fail(result["error"] or f"import {result['id']} {result['status']}", ExitCode.API_ERROR)
    if not as_json:
        typer.echo(f"Dry run: {report['rows']} rows and {report['images']} images are fine; nothing was written."
                   if dry_run else f"Imported {report['tasks']} task{'' if report['tasks'] == 1 else 's'} "
                                   f"({report['new_images']} new images) as prompt set {result['prompt_set']}.")


@annotations_app.command("export")
@handled
def annotations_export(
    project: ProjectOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write (.jsonl or .json).")],
    status: Annotated[str | None, typer.Option(help="submitted, superseded, rejected (comma-separated).")] = None,
    annotator: Annotated[str | None, typer.Option(help="Username.")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601: only annotations changed after it.")] = None,
) -> None:
    """Download every annotation of a project in one request (JSON Lines, or JSON for Label Studio-style tools
    when OUTPUT ends in .json); prints the file."""
    fmt = "json" if output.suffix.lower() == ".json" else "jsonl"
    path = SETTINGS.client().annotations.export(project, output, format=fmt,
                                                status=status.split(",") if status else None,
                                                annotator=annotator, since=since)
    typer.echo(str(path))


@annotations_app.command("list")
@handled
def annotations_list(
    project: ProjectOption,
    status: Annotated[str | None, typer.Option(help="submitted, superseded or rejected.")] = None,
    annotator: Annotated[str | None, typer.Option(help="Username (reviewers only).")] = None,
    as_json: JsonOption = False,
) -> None:
    """A project's annotations (all of them for reviewers, your own for annotators), newest first."""
    print_table(SETTINGS.client().annotations.list(project, status=status, annotator=annotator), [
        ("id", _key("id")), ("task", _key("task")), ("annotator", _key("annotator")), ("status", _key("status")),
        ("ranking", lambda a: " > ".join("=".join(i[:8] for i in group) for group in a.get("ranking") or [])),
        ("created", _date("created_at"))], as_json=as_json)


@annotations_app.command("wait")
@handled
def annotations_wait(
    project: ProjectOption,
    at_least: Annotated[int, typer.Option("--at-least", help="Wait for this many submitted annotations.")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit 7).")] = None,
) -> None:
    """Block until the project has enough submitted annotations; prints the count."""
    count = SETTINGS.client().annotations.wait(project, at_least=at_least, timeout=timeout,
                                               progress=not SETTINGS.quiet)
    typer.echo(count)


# --- templates and model versions ---------------------------------------------------------------


@templates_app.command("list")
@handled
def templates_list(project: Annotated[int | None, typer.Option("--project", "-p", help="Only this project's.")]
                   = None, as_json: JsonOption = False) -> None:
    """Templates of the projects you administer."""
    print_table(SETTINGS.client().templates.list(project=project), [
        ("id", _key("id")), ("project", _key("project")), ("name", _key("name")),
        ("latest", lambda t: (t.get("latest_version") or {}).get("number")),
        ("status", lambda t: (t.get("latest_version") or {}).get("status")), ("updated", _date("updated_at"))],
        as_json=as_json)


@templates_app.command("export")
@handled
def templates_export(
    template: Annotated[int, typer.Argument(help="Template id.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the JSON here (default: stdout).")]
    = None,
    version: Annotated[int | None, typer.Option(help="Version number (default: the newest).")] = None,
) -> None:
    """A template as JSON, for `pickwise templates import`."""
    data = SETTINGS.client().templates.export(template, version=version, path=output)
    if output is None:
        print_json(data)
    else:
        say(f"Wrote {output}.")


@templates_app.command("import")
@handled
def templates_import(file: Annotated[Path, typer.Argument(help="A template export (JSON).")],
                     project: ProjectOption, as_json: JsonOption = False) -> None:
    """A new template in a project from an exported JSON file; prints its id."""
    template = SETTINGS.client().templates.import_from(project, file)
    if as_json:
        print_json(template)
    else:
        typer.echo(template["id"])


@models_app.command("list")
@handled
def models_list(as_json: JsonOption = False) -> None:
    """Enabled model versions and their defaults."""
    print_table(SETTINGS.client().model_versions.list(), [
        ("id", _key("id")), ("name", _key("name")), ("kind", _key("kind")), ("parent", _key("parent")),
        ("size", lambda m: f"{m.get('default_width')}x{m.get('default_height')}"),
        ("steps", _key("default_steps"))], as_json=as_json)


# --- exports ------------------------------------------------------------------------------------


def _export_columns() -> list[tuple[str, Callable[[Any], Any]]]:
    return [("id", _key("id")), ("project", _key("project")), ("format", _key("format")), ("status", _key("status")),
            ("pairs", lambda e: (e.get("counts") or {}).get("pairs")),
            ("rankings", lambda e: (e.get("counts") or {}).get("rankings")), ("created", _date("created_at"))]


@exports_app.command("list")
@handled
def exports_list(project: Annotated[int | None, typer.Option("--project", "-p", help="Only this project's.")]
                 = None, as_json: JsonOption = False) -> None:
    """Exports of the projects you may export from."""
    print_table(SETTINGS.client().exports.list(project=project), _export_columns(), as_json=as_json)


@exports_app.command("show")
@handled
def exports_show(export: Annotated[int, typer.Argument(help="Export id.")]) -> None:
    """An export, as JSON."""
    print_json(SETTINGS.client().exports.get(export))


@exports_app.command("download")
@handled
def exports_download(
    export: Annotated[int, typer.Argument(help="Export id.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="A .zip, .parquet or .jsonl file, or a "
                                                                       "folder (default: ./pickwise-export-ID.zip).")]
    = None,
) -> None:
    """Download a finished export."""
    client = SETTINGS.client()
    info = client.exports.get(export)
    target = output or Path(f"pickwise-export-{export}.zip")
    _check_output(target, info["format"])
    if info["status"] in ("failed", "cancelled"):
        raise JobFailedError("export", dict(info))
    if info["status"] != "succeeded":
        raise PickwiseError(f"Export {export} is {info['status']}; try again when it has finished.")
    typer.echo(_write_export(client, export, info["format"], target))


def _output_kind(target: Path) -> str:
    if target.suffix in (".zip", ".parquet", ".jsonl"):
        return target.suffix
    if target.suffix and not target.is_dir():
        return "unknown"
    return "folder"


def _check_output(target: Path, fmt: str) -> None:
    kind = _output_kind(target)
    allowed = {".zip": EXPORT_FORMATS, ".parquet": ("pickapic", "listwise"), ".jsonl": ("jsonl",),
               "folder": EXPORT_FORMATS}.get(kind, ())
    if fmt not in allowed:
        hint = {"pickapic": ".parquet", "listwise": ".parquet", "jsonl": ".jsonl"}.get(fmt, "a folder")
        fail(f"-o {target}: a {fmt} export is written as {hint}, .zip or a folder.", ExitCode.USAGE)


def _write_export(client: Client, export: int, fmt: str, target: Path) -> Path:
    """The archive (``.zip``), the main table (``.parquet``/``.jsonl``) or every file (a folder)."""
    kind = _output_kind(target)
    progress = not SETTINGS.quiet
    if kind == ".zip":
        return client.exports.download(export, target, progress=progress)
    folder = client.exports.files(export, progress=progress)
    if kind == "folder":
        shutil.copytree(folder, target, dirs_exist_ok=True)
        return target
    shutil.copyfile(client.exports.table_path(export, progress=progress), target)
    return target


@app.command("export")
@handled
def export_command(
    project: ProjectOption,
    output: Annotated[Path, typer.Option("--output", "-o", help="out.parquet (pickapic, listwise), out.jsonl "
                                                                "(jsonl), out.zip or a folder (any format).")],
    format: Annotated[str, typer.Option(help="pickapic, listwise, jsonl, hf or trl.")] = "pickapic",
    name: Annotated[str | None, typer.Option(help="A name for the export.")] = None,
    tie_policy: Annotated[str | None, typer.Option(help="drop, soft or mark.")] = None,
    weight_per_prompt: Annotated[bool | None, typer.Option("--weight-per-prompt/--no-weight-per-prompt",
                                                           show_default=False)] = None,
    include_images: Annotated[bool | None, typer.Option("--images/--no-images", help="Image bytes in the "
                                                        "Parquet.", show_default=False)] = None,
    exclude_rejected: Annotated[bool | None, typer.Option("--exclude-rejected/--include-rejected",
                                                          show_default=False)] = None,
    min_agreement: Annotated[float | None, typer.Option(help="Minimum task agreement (0..1).")] = None,
    gold: Annotated[str | None, typer.Option(help="exclude, include or only.")] = None,
    split_train: Annotated[float | None, typer.Option(help="Share of prompts for training.")] = None,
    split_validation: Annotated[float | None, typer.Option(help="Share for validation.")] = None,
    split_test: Annotated[float | None, typer.Option(help="Share for testing.")] = None,
    split_seed: Annotated[int | None, typer.Option(help="Seed of the prompt-level split.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this many seconds (exit 7).")]
    = None,
    as_json: JsonOption = False,
) -> None:
    """Export a project's rankings, wait for it (progress on stderr) and write it to -o."""
    if format not in EXPORT_FORMATS:
        fail(f"--format {format!r}: choose one of {', '.join(EXPORT_FORMATS)}.", ExitCode.USAGE)
    _check_output(output, format)
    client = SETTINGS.client()
    created = client.exports.create(
        project, format, name=name, tie_policy=tie_policy, weight_per_prompt=weight_per_prompt,
        include_images=include_images, exclude_rejected=exclude_rejected, min_agreement=min_agreement, gold=gold,
        split_train=split_train, split_validation=split_validation, split_test=split_test, split_seed=split_seed)
    say(f"Export {created['id']} queued.")
    done = client.exports.wait(created["id"], timeout=timeout, progress=not SETTINGS.quiet)
    path = _write_export(client, done["id"], format, output)
    if as_json:
        print_json({**done, "output": str(path)})
    else:
        counts = ", ".join(f"{value} {key}" for key, value in (done["counts"] or {}).items())
        typer.echo(f"Export {done['id']} ({counts}) written to {path}")


# --- training runs ------------------------------------------------------------------------------

KINDS = {"reward": "reward_runs", "finetune": "finetune_runs"}


def _resource(client: Client, kind: str) -> Any:
    return getattr(client, KINDS[kind])


def _run_ref(kind: str, run: Mapping[str, Any]) -> str:
    return f"{kind}-{run['id']}"


def _finish(kind: str, run: Mapping[str, Any], *, wait: bool, timeout: float | None, as_json: bool) -> None:
    client = SETTINGS.client()
    ref = _run_ref(kind, run)
    if wait:
        say(f"Run {ref} queued; waiting (Ctrl-C stops waiting, not the run).")
        run = _resource(client, kind).wait(run["id"], timeout=timeout, progress=not SETTINGS.quiet,
                                           raise_on_failure=False)
    if as_json:
        print_json({**run, "ref": ref})
    elif wait:
        result = run.get("registered_version") if kind == "reward" else run.get("result_version")
        made = f"; registered {'reward model' if kind == 'reward' else 'model version'} {result}" if result else ""
        typer.echo(f"{ref} {run['status']}{made}")
    else:
        typer.echo(ref)
    if wait and run["status"] != "succeeded":
        fail(f"{ref} {run['status']}" + (f": {run['error']}" if run.get("error") else ""), ExitCode.JOB_FAILED)


SetOption = Annotated[list[str] | None, typer.Option("--set", help="A hyperparameter, key=value (repeatable).")]
WaitOption = Annotated[bool, typer.Option("--wait", help="Wait for the run, with a progress bar; exit 6 if it "
                                                         "fails.")]
TimeoutOption = Annotated[float | None, typer.Option(help="With --wait: give up after this many seconds (exit 7).")]


@train_app.command("reward")
@handled
def train_reward(
    export: Annotated[int, typer.Option(help="A succeeded pickapic or listwise export.")],
    backbone: Annotated[str, typer.Option(
        help="Empty for the preset's own; tiny, shapes_vae, shapes_conv, a CLIP folder on the server, or a cached "
             "hub id.")] = "",
    preset: Annotated[str, typer.Option(help="tiny, shapes (images of the shipped shapes model) or pickscore.")] = "tiny",
    hyperparameters: SetOption = None,
    name: Annotated[str, typer.Option(help="A name for the run.")] = "",
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train a reward model on an export; prints the run (reward-ID)."""
    run = SETTINGS.client().reward_runs.create(export, backbone=backbone, preset=preset,
                                               hyperparameters=parse_sets(hyperparameters), name=name)
    _finish("reward", run, wait=wait, timeout=timeout, as_json=as_json)


@train_app.command("finetune")
@handled
def train_finetune(
    base: Annotated[str, typer.Option(help="Model version name or id to start from.")],
    method: Annotated[str, typer.Option(help="dpo or ddpo.")],
    export: Annotated[int | None, typer.Option(help="DPO: the export of pairs.")] = None,
    project: Annotated[int | None, typer.Option("--project", "-p", help="DDPO: the project (prompts).")] = None,
    reward: Annotated[str | None, typer.Option(help="DDPO: a built-in reward (brightness, shapes_adherence...).")]
    = None,
    reward_model: Annotated[int | None, typer.Option(help="DDPO: a registered reward model's id.")] = None,
    prompt_source: Annotated[str | None, typer.Option(help="DDPO: project or export.")] = None,
    preset: Annotated[str, typer.Option(help="tiny or sd15.")] = "tiny",
    hyperparameters: SetOption = None,
    eval_prompt: Annotated[list[str] | None, typer.Option(help="A fixed evaluation prompt (repeatable).")] = None,
    name: Annotated[str, typer.Option(help="A name for the run.")] = "",
    wait: WaitOption = False,
    timeout: TimeoutOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fine-tune a LoRA (Diffusion-DPO or DDPO); prints the run (finetune-ID)."""
    run = SETTINGS.client().finetune_runs.create(
        base, method, export=export, project=project, reward=reward, reward_version=reward_model,
        prompt_source=prompt_source, preset=preset, hyperparameters=parse_sets(hyperparameters),
        eval_prompts=eval_prompt, name=name)
    _finish("finetune", run, wait=wait, timeout=timeout, as_json=as_json)


KindOption = Annotated[str | None, typer.Option(help="reward or finetune (needed only for a bare number that both "
                                                     "kinds have).")]
RunArgument = Annotated[str, typer.Argument(help="A run: reward-12, finetune-7, or a number.")]


def resolve_run(client: Client, ref: str, kind: str | None) -> tuple[str, dict[str, Any]]:
    """``(kind, run)`` for ``reward-12``, ``finetune-7``, or a bare id (with ``--kind``, or the kind that has it)."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r}: choose reward or finetune.", ExitCode.USAGE)
    prefix, sep, number = ref.rpartition("-")
    if sep and prefix in KINDS and number.isdigit():
        if kind is not None and kind != prefix:
            fail(f"{ref} is a {prefix} run, not {kind}.", ExitCode.USAGE)
        kind, ref = prefix, number
    if not ref.isdigit():
        fail(f"Run {ref!r}: write reward-12, finetune-7 or a number.", ExitCode.USAGE)
    if kind is not None:
        return kind, dict(_resource(client, kind).get(int(ref)))
    found: list[tuple[str, dict[str, Any]]] = []
    for candidate in KINDS:
        try:
            found.append((candidate, dict(_resource(client, candidate).get(int(ref)))))
        except NotFoundError:
            continue
    if not found:
        raise NotFoundError(f"No reward or fine-tune run {ref} that you may see.", status=404)
    if len(found) > 1:
        fail(f"Both reward-{ref} and finetune-{ref} exist; write one of them (or pass --kind).", ExitCode.USAGE)
    return found[0]


@runs_app.command("list")
@handled
def runs_list(
    kind: Annotated[str | None, typer.Option(help="reward or finetune (default: both).")] = None,
    project: Annotated[int | None, typer.Option("--project", "-p", help="Only this project's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Reward-model and fine-tune runs of the projects where you may train."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r}: choose reward or finetune.", ExitCode.USAGE)
    client = SETTINGS.client()
    rows = [{**run, "ref": _run_ref(name, run), "kind": name}
            for name in KINDS if kind in (None, name) for run in _resource(client, name).list(project=project)]
    print_table(rows, [
        ("run", _key("ref")), ("project", _key("project")), ("status", _key("status")),
        ("step", lambda r: f"{r.get('step')}/{r.get('total_steps')}"), ("name", _key("name")),
        ("created", _date("created_at"))], as_json=as_json)


@runs_app.command("show")
@handled
def runs_show(run: RunArgument, kind: KindOption = None) -> None:
    """A run (config, history, results), as JSON."""
    found_kind, found = resolve_run(SETTINGS.client(), run, kind)
    print_json({**found, "ref": _run_ref(found_kind, found)})


@runs_app.command("watch")
@handled
def runs_watch(
    run: RunArgument,
    kind: KindOption = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 2.0,
    timeout: Annotated[float | None, typer.Option(help="Stop watching after this many seconds (exit 7).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print the run's metrics as it logs them (JSON lines with --json), until it finishes; exit 0 when it
    succeeded, 6 when it failed or was cancelled."""
    client = SETTINGS.client()
    found_kind, found = resolve_run(client, run, kind)
    resource = _resource(client, found_kind)
    total = found.get("total_steps")
    for point in resource.watch(found["id"], poll_interval=interval, timeout=timeout):
        typer.echo(json.dumps(point) if as_json else metrics_line(point, total))
    final = resource.get(found["id"])
    ref = _run_ref(found_kind, final)
    if final["status"] != "succeeded":
        fail(f"{ref} {final['status']}" + (f": {final['error']}" if final.get("error") else ""), ExitCode.JOB_FAILED)
    say(f"{ref} succeeded.")


@runs_app.command("cancel")
@handled
def runs_cancel(run: RunArgument, kind: KindOption = None) -> None:
    """Cancel a queued or running run."""
    client = SETTINGS.client()
    found_kind, found = resolve_run(client, run, kind)
    cancelled = _resource(client, found_kind).cancel(found["id"])
    typer.echo(f"{_run_ref(found_kind, cancelled)} {cancelled['status']}")


@runs_app.command("retry")
@handled
def runs_retry(run: RunArgument, kind: KindOption = None) -> None:
    """Queue a failed or cancelled run again (it resumes from its last checkpoint)."""
    client = SETTINGS.client()
    found_kind, found = resolve_run(client, run, kind)
    queued = _resource(client, found_kind).retry(found["id"])
    typer.echo(f"{_run_ref(found_kind, queued)} {queued['status']}")


# --- webhooks ------------------------------------------------------------------------------------

EndpointArgument = Annotated[int, typer.Argument(help="Webhook endpoint id (from `pickwise webhooks list`).")]


@webhooks_app.command("list")
@handled
def webhooks_list(project: ProjectOption, as_json: JsonOption = False) -> None:
    """A project's webhook endpoints."""
    print_table(SETTINGS.client().webhooks.list(project), [
        ("id", _key("id")), ("url", _key("url")), ("events", lambda e: ",".join(e.get("event_types") or [])),
        ("active", _key("is_active")), ("failures", _key("consecutive_failures")),
        ("last success", _date("last_success_at")), ("description", _key("description"))], as_json=as_json)


@webhooks_app.command("add")
@handled
def webhooks_add(
    url: Annotated[str, typer.Argument(help="The http(s) URL that receives the events.")],
    project: ProjectOption,
    events: Annotated[list[str] | None, typer.Option("--event", "-e", help="An event to receive (repeat it); "
                                                                           "every event when left out.")] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Register an endpoint; prints its signing secret (shown this once: keep it with the receiver)."""
    endpoint = SETTINGS.client().webhooks.create(project, url, events=events or None, description=description)
    if as_json:
        print_json(endpoint)
        return
    sent = ", ".join(endpoint["event_types"])
    say(f"Webhook {endpoint['id']} sends {sent} to {endpoint['url']}. Its signing secret, shown this once:")
    typer.echo(endpoint["secret"])


@webhooks_app.command("remove")
@handled
def webhooks_remove(endpoint: EndpointArgument, project: ProjectOption) -> None:
    """Delete an endpoint and its delivery log."""
    SETTINGS.client().webhooks.remove(project, endpoint)
    say(f"Removed webhook {endpoint}.")


@webhooks_app.command("deliveries")
@handled
def webhooks_deliveries(
    endpoint: EndpointArgument,
    project: ProjectOption,
    status: Annotated[str | None, typer.Option(help="pending, succeeded or failed.")] = None,
    event: Annotated[str | None, typer.Option(help="Only this event type.")] = None,
    as_json: JsonOption = False,
) -> None:
    """What was sent to an endpoint, newest first: status, attempts, the last answer and its latency."""
    print_table(SETTINGS.client().webhooks.deliveries(project, endpoint, status=status, event=event), [
        ("id", _key("id")), ("event", _key("event_type")), ("webhook-id", _key("webhook_id")),
        ("status", _key("status")), ("attempts", _key("attempts")), ("http", _key("last_status_code")),
        ("ms", _key("last_latency_ms")), ("error", _key("last_error")), ("created", _date("created_at"))],
        as_json=as_json)


@webhooks_app.command("test")
@handled
def webhooks_test(endpoint: EndpointArgument, project: ProjectOption) -> None:
    """Send a ping event to an endpoint now; prints the delivery's id (see `pickwise webhooks deliveries`)."""
    delivery = SETTINGS.client().webhooks.test(project, endpoint)
    typer.echo(delivery["id"])


@webhooks_app.command("redeliver")
@handled
def webhooks_redeliver(endpoint: EndpointArgument,
                       delivery: Annotated[int, typer.Argument(help="Delivery id.")], project: ProjectOption) -> None:
    """Send a finished delivery again (the same webhook-id and body)."""
    again = SETTINGS.client().webhooks.redeliver(project, endpoint, delivery)
    typer.echo(f"{again['id']} {again['status']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
