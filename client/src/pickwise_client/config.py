"""Where the client finds its server and token: arguments, then the environment, then the config file.

``pickwise login`` writes ``{"url", "token", "username"}`` to the config file, readable by its owner
only (mode 0600, in a 0700 directory). The file is ``$PICKWISE_CONFIG`` when set, else
``$XDG_CONFIG_HOME/pickwise/config.json``, else ``~/.config/pickwise/config.json``. A token from the
file is used only with the URL it was issued for, so it is never sent to another server.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pickwise_client.errors import ConfigurationError, NotLoggedInError

ENV_URL = "PICKWISE_URL"
ENV_TOKEN = "PICKWISE_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_CONFIG = "PICKWISE_CONFIG"
ENV_CACHE = "PICKWISE_CACHE_DIR"


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str
    username: str = ""


def config_path() -> Path:
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pickwise" / "config.json"


def cache_dir() -> Path:
    """Downloaded exports are kept here (``$PICKWISE_CACHE_DIR``, else ``$XDG_CACHE_HOME/pickwise``)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pickwise"


def normalize_url(url: str) -> str:
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise ConfigurationError(f"The server URL must start with http:// or https://, not {url!r}.")
    return url.rstrip("/")


def load_saved(path: Path | None = None) -> Credentials | None:
    """The credentials ``pickwise login`` saved, or ``None`` when there are none."""
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"Cannot read the Pickwise config file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str) or not isinstance(data.get("token"), str):
        raise ConfigurationError(f"The Pickwise config file {path} has no url and token; run `pickwise login`.")
    return Credentials(url=normalize_url(data["url"]), token=data["token"], username=str(data.get("username", "")))


def save(credentials: Credentials, path: Path | None = None) -> Path:
    """Write the credentials atomically, readable by the owner only."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = json.dumps({"url": credentials.url, "token": credentials.token, "username": credentials.username},
                      indent=2) + "\n"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # the umask cannot widen it, and an old file's mode is not kept
        os.write(descriptor, body.encode())
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    return path


def forget(path: Path | None = None) -> bool:
    """Delete the saved credentials; ``False`` when there were none."""
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def resolve(url: str | None = None, token: str | None = None, *, path: Path | None = None) -> Credentials:
    """The URL and token to use: each from the arguments, else the environment, else the config file."""
    explicit_token = token or os.environ.get(ENV_TOKEN)
    chosen_url = url or os.environ.get(ENV_URL)
    saved = load_saved(path) if not (chosen_url and explicit_token) else None  # the file only when needed
    chosen_url = chosen_url or (saved.url if saved else None)
    if not chosen_url:
        raise NotLoggedInError(
            f"No Pickwise server: pass url=..., set {ENV_URL}, or run `pickwise login --url URL`.")
    chosen_url = normalize_url(chosen_url)
    chosen_token = explicit_token
    username = ""
    if not chosen_token and saved is not None and saved.url == chosen_url:
        chosen_token, username = saved.token, saved.username
    if not chosen_token:
        raise NotLoggedInError(
            f"No API token for {chosen_url}: pass token=..., set {ENV_TOKEN}, use Client.login(), "
            "or run `pickwise login`.")
    return Credentials(url=chosen_url, token=chosen_token, username=username)
