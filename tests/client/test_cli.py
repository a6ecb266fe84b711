"""The ``pickwise`` command line against the live test server, through typer's CliRunner: login and its
config file, listings with --json, exit codes and messages on stderr."""

from __future__ import annotations

import json
import stat

import pytest
from pickwise_client.cli import ExitCode, app
from typer.testing import CliRunner

from annotate.models import Prompt
from tests.client.conftest import token_for
from tests.factories import PASSWORD


@pytest.fixture
def run(live_server, tmp_path):
    """``run(*args, user=None, input=None)``: the CLI with ``user``'s token in the environment (none: whatever
    ``pickwise login`` saved in this test's config file)."""
    runner = CliRunner()

    def invoke(*args: str, user=None, input: str | None = None, url: str | None = None):
        env = {"PICKWISE_URL": url or (live_server.url if user is not None else None),
               "PICKWISE_TOKEN": token_for(user) if user is not None else None}
        return runner.invoke(app, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


def test_login_saves_the_token_for_the_owner_only_and_later_commands_use_it(run, live_server, project, admin_user,
                                                                            tmp_path):
    refused = run("login", "--url", live_server.url, "-u", admin_user.username, "--password-stdin", input="nope\n")
    assert refused.exit_code == ExitCode.AUTH
    assert "refused the username or password" in refused.stderr and refused.stdout == ""

    done = run("login", "--url", live_server.url, "-u", admin_user.username, "--password-stdin",
               input=PASSWORD + "\n")
    assert done.exit_code == 0, done.stderr
    config_file = tmp_path / "config" / "pickwise.json"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert json.loads(config_file.read_text()) == {"url": live_server.url, "token": token_for(admin_user),
                                                   "username": admin_user.username}
    assert f"as {admin_user.username}" in done.stderr

    listed = run("projects", "list", "--json")
    assert listed.exit_code == 0 and [p["name"] for p in json.loads(listed.stdout)] == ["Shapes"]
    table = run("projects", "list")
    assert table.stdout.splitlines()[0].split() == ["ID", "NAME", "ROLE", "ARCHIVED", "CREATED"]
    assert table.stdout.splitlines()[1].split()[:3] == [str(project.pk), "Shapes", "admin"]
    assert json.loads(run("whoami", "--json").stdout)["username"] == admin_user.username

    assert run("logout").exit_code == 0 and not config_file.exists()
    after = run("projects", "list")
    assert after.exit_code == ExitCode.AUTH and "pickwise login" in after.stderr


def test_every_listing_prints_json(run, project, admin_user, ml_engineer):
    for args in (["projects", "list"], ["prompts", "list", "-p", str(project.pk)],
                 ["tasks", "list", "-p", str(project.pk)], ["annotations", "list", "-p", str(project.pk)],
                 ["templates", "list"], ["models", "list"], ["exports", "list"], ["runs", "list"]):
        result = run(*args, "--json", user=admin_user)
        assert result.exit_code == 0, (args, result.stderr)
        assert isinstance(json.loads(result.stdout), list), args


def test_exit_codes_and_messages(run, live_server, project, other_project, admin_user, annotator, tmp_path):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,seed\na red circle,1\na blue square,\n")
    imported = run("prompts", "import", str(prompts), "--project", str(project.pk), user=admin_user)
    assert imported.exit_code == 0 and imported.stdout == "Imported 2 prompts into prompt set " \
        f"{project.prompt_sets.get().pk}.\n"

    broken = tmp_path / "broken.csv"
    broken.write_text("prompt,seed\nfine,1\nbad,x\n,3\n")
    refused = run("prompts", "import", str(broken), "--project", str(project.pk), user=admin_user)
    assert refused.exit_code == ExitCode.API_ERROR and refused.stdout == ""
    assert refused.stderr.splitlines()[1:] == ["  file line 3: seed 'x' is not a whole number",
                                               "  file line 4: the prompt is empty"]
    assert Prompt.objects.filter(project=project).count() == 2  # nothing of the bad file

    missing_file = run("prompts", "import", str(tmp_path / "absent.csv"), "-p", str(project.pk), user=admin_user)
    assert missing_file.exit_code == ExitCode.USAGE and "No file" in missing_file.stderr

    not_found = run("projects", "show", str(other_project.pk), user=admin_user)
    assert not_found.exit_code == ExitCode.NOT_FOUND and "404" in not_found.stderr

    forbidden = run("projects", "create", "Mine now", user=annotator)
    assert forbidden.exit_code == ExitCode.PERMISSION
    assert "Only project admins may create projects." in forbidden.stderr

    bad_token = run("--token", "wrong", "projects", "list", user=admin_user)
    assert bad_token.exit_code == ExitCode.AUTH and "Invalid token." in bad_token.stderr

    invalid = run("train", "finetune", "--base", "no-such-model", "--method", "dpo", user=admin_user)
    assert invalid.exit_code == ExitCode.API_ERROR and "base_version: No model version 'no-such-model'" in \
        invalid.stderr

    assert run("runs", "watch", "twelve", user=admin_user).exit_code == ExitCode.USAGE
    assert run("runs", "watch", "reward-424242", user=admin_user).exit_code == ExitCode.NOT_FOUND
    assert run("export", "-p", str(project.pk), "--format", "hf", "-o", "out.parquet",
               user=admin_user).exit_code == ExitCode.USAGE
    assert run("projects", "list", "--no-such-option", user=admin_user).exit_code == ExitCode.USAGE
    assert run("train", "reward", "--export", "1", "--set", "oops", user=admin_user).exit_code == ExitCode.USAGE

    gone = run("--retries", "0", "projects", "list", url="http://127.0.0.1:9", user=admin_user)
    assert gone.exit_code == ExitCode.UNREACHABLE and "Cannot reach http://127.0.0.1:9" in gone.stderr

    created = run("projects", "create", "From the shell", "--json", user=admin_user)
    assert created.exit_code == 0 and json.loads(created.stdout)["name"] == "From the shell"
    template = tmp_path / "template.json"
    made = run("templates", "import", str(template), "-p", str(project.pk), user=admin_user)
    assert made.exit_code == ExitCode.USAGE and "No template file" in made.stderr


def test_tasks_import_then_annotations_export(run, project, admin_user, ml_engineer, tmp_path, settings):
    import io

    from PIL import Image

    from tests.annotate.factories_workflow import set_workflow

    settings.MEDIA_ROOT = tmp_path / "media"
    set_workflow(project, images_per_task=2)
    folder = tmp_path / "images"
    folder.mkdir()
    for n in range(2):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (90 * n, 20, 20)).save(buffer, format="PNG")
        (folder / f"{n}.png").write_bytes(buffer.getvalue())
    table = tmp_path / "tasks.csv"
    table.write_text("prompt,image_0,image_1\na pair,0.png,gone.png\n")
    bad = run("-q", "tasks", "import", str(table), "-p", str(project.pk), "--images", str(folder), user=admin_user)
    assert bad.exit_code == ExitCode.API_ERROR
    assert "line 2 [image_1]: missing image: no file 'gone.png'" in bad.stderr
    table.write_text("prompt,image_0,image_1\na pair,0.png,1.png\n")
    good = run("-q", "tasks", "import", str(table), "-p", str(project.pk), "--images", str(folder), user=admin_user)
    assert good.exit_code == 0, good.stderr
    assert good.stdout.startswith("Imported 1 task (2 new images)")
    target = tmp_path / "out.jsonl"
    exported = run("annotations", "export", "-p", str(project.pk), "-o", str(target), user=ml_engineer)
    assert exported.exit_code == 0 and exported.stdout.strip() == str(target) and target.read_text() == ""
