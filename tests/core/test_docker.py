"""No Docker engine runs here, so the compose stack is checked by reading it."""

from __future__ import annotations

import re
from pathlib import Path

import dj_database_url
import yaml

from config.celery import QUEUES
from config.env import REGISTRY

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ROOT = DOCKER.parent


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def env_file(name: str) -> dict[str, str]:
    pairs = {}
    for line in (DOCKER / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_every_role_of_the_stack_is_a_service():
    services = compose()["services"]
    assert {"postgres", "redis", "web", "worker-default", "worker-gpu", "worker-train", "beat", "flower"} <= set(
        services
    )
    for name in ("postgres", "redis", "web", "worker-default", "worker-gpu", "worker-train"):
        assert "healthcheck" in services[name], f"{name} has no health check"


def test_builds_point_at_existing_dockerfiles_and_gpu_workers_use_cuda():
    services = compose()["services"]
    for name, service in services.items():
        if "build" in service:
            dockerfile = (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
    for name in ("worker-gpu", "worker-train"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    gpu_dockerfile = (DOCKER / "Dockerfile.gpu").read_text()
    assert gpu_dockerfile.startswith("#") and "FROM nvidia/cuda:" in gpu_dockerfile
    assert "torch==2.13.0" in gpu_dockerfile


def test_workers_consume_exactly_the_configured_queues():
    services = compose()["services"]
    consumed = set()
    for name in ("worker-default", "worker-gpu", "worker-train"):
        command = services[name]["command"]
        consumed |= set(command[command.index("-Q") + 1].split(","))
    assert consumed == set(QUEUES)


def test_named_volumes_are_declared():
    data = compose()
    declared = set(data["volumes"])
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in declared, f"{name} mounts undeclared volume {source}"


def test_env_files_exist_and_name_only_real_settings():
    data = compose()
    for name, service in data["services"].items():
        for filename in service.get("env_file", []):
            assert (DOCKER / filename).is_file(), f"{name}: env file {filename} missing"
        for key in service.get("environment", {}):
            assert key in REGISTRY, f"{name} sets {key}, which the settings never read"
    app_env = env_file("pickwise.env")
    unknown = sorted(set(app_env) - set(REGISTRY))
    assert not unknown, f"pickwise.env sets keys the settings never read: {unknown}"
    assert app_env["PICKWISE_ENV"] == "production"


def test_database_and_broker_urls_point_at_the_compose_services():
    app_env = env_file("pickwise.env")
    pg_env = env_file("postgres.env")
    db = dj_database_url.parse(app_env["DATABASE_URL"])
    assert db["HOST"] == "postgres" and db["PORT"] == 5432
    assert (db["USER"], db["PASSWORD"], db["NAME"]) == (
        pg_env["POSTGRES_USER"], pg_env["POSTGRES_PASSWORD"], pg_env["POSTGRES_DB"]
    )
    assert re.fullmatch(r"redis://redis:6379/\d+", app_env["CELERY_BROKER_URL"])
    assert int(app_env["CELERY_TASK_TIME_LIMIT"]) < int(app_env["CELERY_VISIBILITY_TIMEOUT"])


def test_images_install_the_pinned_requirements():
    pins = (ROOT / "requirements.txt").read_text()
    assert "torch==2.13.0" in pins
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert "pip install -r requirements.txt" in text


REQUIRED_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?(?P<message>[^}]+)\}$")


def app_services() -> dict[str, dict]:
    """The services that run Pickwise's own code (built from this repository)."""
    return {name: service for name, service in compose()["services"].items() if "build" in service}


def test_no_secret_key_is_shipped():
    assert "SECRET_KEY" not in env_file("pickwise.env")
    for path in sorted(DOCKER.iterdir()):
        assert not re.search(r"SECRET_KEY=[^\s$\"]", path.read_text()), f"{path.name} sets a literal SECRET_KEY"


def test_every_app_service_refuses_to_start_without_the_operators_key():
    """`${SECRET_KEY:?message}`: compose stops `up` with the message when the operator set no key."""
    services = app_services()
    assert {"migrate", "web", "worker-default", "worker-gpu", "worker-train", "beat", "flower"} <= set(services)
    for name, service in services.items():
        match = REQUIRED_VARIABLE.match(service["environment"]["SECRET_KEY"])
        assert match, f"{name}: SECRET_KEY is not a required variable"
        assert match["name"] == "SECRET_KEY" and "README" in match["message"]
    assert app_services()["worker-gpu"]["environment"]["PICKWISE_DEVICE"] == "cuda"


def test_the_image_build_uses_a_throwaway_random_key():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert 'SECRET_KEY="$(python -c \'import secrets; print(secrets.token_urlsafe(64))\')"' in dockerfile


def test_secrets_and_local_state_stay_out_of_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "var", "**/.env", "**/*.local.env"} <= ignored
    git_ignored = {line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()}
    assert {".env", "*.local.env"} <= git_ignored


def test_flower_is_reachable_from_the_host_only():
    """Flower has no login and can revoke tasks."""
    assert compose()["services"]["flower"]["ports"] == ["127.0.0.1:5555:5555"]


# --- docker/compose.scale.yml: several GPU workers and a multi-GPU training worker over the base stack ---

def scale() -> dict:
    return yaml.safe_load((DOCKER / "compose.scale.yml").read_text())


def queue_of(service: dict) -> str:
    command = service["command"]
    return command[command.index("-Q") + 1]


def test_scale_file_runs_one_generation_worker_per_gpu_and_a_multi_gpu_trainer():
    services = scale()["services"]
    base = compose()["services"]
    # The base file's one-GPU workers are parked in a profile; the new workers extend a base service.
    assert services["worker-gpu"] == {"profiles": ["single-gpu"]} == {"profiles": services["worker-train"]["profiles"]}
    workers = {name: s for name, s in services.items() if name.startswith("worker-gpu-") or name == "worker-train-multi"}
    assert sorted(workers) == ["worker-gpu-0", "worker-gpu-1", "worker-gpu-2", "worker-gpu-3", "worker-train-multi"]
    reserved: list[str] = []
    for name, service in workers.items():
        extends = service["extends"]
        assert extends["file"] == "compose.yml" and extends["service"] in base, name
        assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
        assert service["environment"]["PICKWISE_DEVICE"] == "cuda"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and "count" not in device
        ids = device["device_ids"]
        # Inside the container the reserved GPUs are numbered from 0; the worker uses every one of them.
        assert service["environment"]["CUDA_VISIBLE_DEVICES"] == ",".join(str(i) for i in range(len(ids)))
        command, environment = service["command"], service["environment"]
        # One GPU task per worker at a time: on the command line, or for the training worker (whose runs start
        # their own processes, one per GPU) through TRAIN_WORKER_CONCURRENCY.
        concurrency = (command[command.index("--concurrency") + 1] if "--concurrency" in command
                       else environment["TRAIN_WORKER_CONCURRENCY"])
        assert concurrency == "1", name
        assert command[command.index("--prefetch-multiplier") + 1] == "1", name
        reserved += ids
    assert len(reserved) == len(set(reserved)) == 8  # no GPU is given to two workers
    assert {queue_of(s) for n, s in workers.items() if n.startswith("worker-gpu-")} == {"gpu"}
    trainer = workers["worker-train-multi"]
    assert queue_of(trainer) == "gpu-train"
    assert len(trainer["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]) == 4
    # Its runs' processes may use all four GPUs it sees (and TRAIN_MAX_PROCESSES defaults to their count).
    assert "--concurrency" not in trainer["command"]
    assert trainer["environment"]["TRAIN_CUDA_VISIBLE_DEVICES"] == trainer["environment"]["CUDA_VISIBLE_DEVICES"]
    # Every queue is still consumed with the base workers parked.
    running = {**base, **services}
    consumed = {queue_of(s) for name, s in running.items()
                if name.startswith("worker") and "profiles" not in services.get(name, {})}
    assert consumed == set(QUEUES)


def test_scale_file_sets_only_real_settings_and_enough_database_connections():
    services = scale()["services"]
    process_env = {"CUDA_VISIBLE_DEVICES"}  # read by CUDA, not by the settings
    for name, service in services.items():
        for key in service.get("environment", {}):
            assert key in REGISTRY or key in process_env, f"{name} sets {key}, which nothing reads"
    postgres = services["postgres"]["command"]
    max_connections = int(next(a.split("=")[1] for a in postgres if a.startswith("max_connections=")))
    web = services["web"]["command"]
    web_processes = int(web[web.index("--workers") + 1])
    default = services["worker-default"]["command"]
    worker_processes = int(default[default.index("--concurrency") + 1]) + 5  # 4 gpu + 1 train worker
    # One connection per process (CONN_MAX_AGE keeps it), plus beat, migrate and a margin of 2x.
    assert max_connections >= 2 * (web_processes + worker_processes + 2)


# --- docker/compose.node.yml: another machine of training runs over several machines ---

def test_node_file_runs_one_node_worker_that_reaches_the_main_host_and_its_shared_storage():
    from django.conf import settings

    from config.celery import TASK_ROUTES

    services = yaml.safe_load((DOCKER / "compose.node.yml").read_text())["services"]
    assert list(services) == ["worker-train-node"]
    node = services["worker-train-node"]
    assert node["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert (DOCKER / node["env_file"][0]).is_file()
    command = node["command"]
    # The queue the run's task sends each other machine's part to, one part at a time per machine.
    assert queue_of(node) == settings.TRAIN_NODE_QUEUE == TASK_ROUTES["rlhf.tasks.training_node_*"]["queue"]
    assert command[command.index("--concurrency") + 1] == "1"
    assert command[command.index("--prefetch-multiplier") + 1] == "1"
    environment = node["environment"]
    for key in environment:
        assert key in REGISTRY or key == "CUDA_VISIBLE_DEVICES", f"compose.node.yml sets {key}, which nothing reads"
    # The main host's database and broker, with pickwise.env's credentials and database.
    main_host = "${PICKWISE_MAIN_HOST:?set PICKWISE_MAIN_HOST to the main host's private address}"
    app_env = env_file("pickwise.env")
    assert environment["DATABASE_URL"] == app_env["DATABASE_URL"].replace("@postgres:", f"@{main_host}:")
    assert environment["CELERY_BROKER_URL"] == app_env["CELERY_BROKER_URL"].replace("//redis:", "//${PICKWISE_MAIN_HOST:?}:")
    # The run directories and exports at the main host's paths (the run names them by absolute path).
    targets = {volume.rsplit(":", 1)[1] for volume in node["volumes"]}
    assert targets == {app_env["PICKWISE_MODEL_CACHE_DIR"], app_env["PICKWISE_EXPORT_DIR"]}
    assert node["network_mode"] == "host"  # ranks on several machines connect to each other directly
    assert environment["TRAIN_CUDA_VISIBLE_DEVICES"] == environment["CUDA_VISIBLE_DEVICES"]
    # On the main host, the training worker is the rendezvous, on the host's network, reaching the published
    # database and broker on the same private address.
    trainer = scale()["services"]["worker-train-multi"]
    private = "${PICKWISE_PRIVATE_IP:-127.0.0.1}"
    assert trainer["network_mode"] == "host" and trainer["environment"]["TRAIN_MAIN_PROCESS_IP"] == private
    assert trainer["environment"]["DATABASE_URL"] == app_env["DATABASE_URL"].replace("@postgres:", f"@{private}:")
    assert scale()["services"]["postgres"]["ports"] == [f"{private}:5432:5432"]
    assert scale()["services"]["redis"]["ports"] == [f"{private}:6379:6379"]
