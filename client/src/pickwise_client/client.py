"""The :class:`Client`: one object per server and token, with a resource attribute per API area."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import httpx

from pickwise_client import config
from pickwise_client._base import Context
from pickwise_client._exports import Exports
from pickwise_client._generation import GenerationJobs, Images, ModelVersions
from pickwise_client._http import HTTP
from pickwise_client._imports import TaskImports
from pickwise_client._projects import Annotations, Arena, Members, Projects, PromptSets, Tasks
from pickwise_client._runs import FineTuneRuns, RewardModels, RewardRuns
from pickwise_client._templates import Templates
from pickwise_client._webhooks import Webhooks
from pickwise_client.errors import APIError, AuthenticationError, NetworkError, RequestTimeoutError
from pickwise_client.types import Me

__version__ = "0.1.0"
USER_AGENT = f"pickwise-client/{__version__} httpx/{httpx.__version__}"


class Client:
    """A connection to one Pickwise server as one user.

    ``Client(url, token)``, or ``Client()`` to take them from ``PICKWISE_URL`` / ``PICKWISE_TOKEN``
    (else from the file ``pickwise login`` wrote). ``Client.login(url, username, password)`` gets a
    token with a username and password.

    ``timeout`` (seconds) bounds every request; calls that are safe to repeat are retried up to
    ``max_retries`` times on 429/503 and on refused connections, waiting ``Retry-After`` or an
    exponential backoff (``backoff_factor * 2**attempt`` s, at most ``max_backoff``). Use it as a
    context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 4,
        backoff_factor: float = 0.5,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        verify: bool | str = True,
        cache_dir: str | os.PathLike[str] | None = None,
        config_file: str | os.PathLike[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        credentials = config.resolve(url, token, path=Path(config_file) if config_file else None)
        self.url = credentials.url
        self._http = HTTP(credentials.url, credentials.token, timeout=timeout, max_retries=max_retries,
                          backoff_factor=backoff_factor, max_backoff=max_backoff, max_retry_after=max_retry_after,
                          verify=verify, user_agent=USER_AGENT, sleep=sleep)
        context = Context(http=self._http, cache_dir=Path(cache_dir) if cache_dir else config.cache_dir(),
                          sleep=sleep)
        self.projects = Projects(context)
        self.members = Members(context)
        self.arena = Arena(context)
        self.prompt_sets = PromptSets(context)
        self.tasks = Tasks(context)
        self.annotations = Annotations(context)
        self.imports = TaskImports(context)
        self.templates = Templates(context)
        self.model_versions = ModelVersions(context)
        self.generation = GenerationJobs(context)
        self.images = Images(context)
        self.exports = Exports(context)
        self.reward_runs = RewardRuns(context)
        self.reward_models = RewardModels(context)
        self.finetune_runs = FineTuneRuns(context)
        self.webhooks = Webhooks(context)

    @classmethod
    def login(cls, url: str, username: str, password: str, *, timeout: float = 30.0, verify: bool | str = True,
              **options: Any) -> Client:
        """A client with the API token of ``username`` (``POST /api/token/``); raises
        :class:`~pickwise_client.AuthenticationError` when the server refuses the credentials."""
        return cls(url, obtain_token(url, username, password, timeout=timeout, verify=verify), timeout=timeout,
                   verify=verify, **options)

    @property
    def token(self) -> str:
        return str(self._http.client.headers["Authorization"]).removeprefix("Token ")

    def me(self) -> Me:
        """You: id, username, global roles and what they let you do."""
        return cast(Me, self._http.get("api/me/"))

    def health(self) -> dict[str, Any]:
        """``{"database": "ok", "broker": "ok"}``; a 503 (raised) names what is down."""
        return cast(dict[str, Any], self._http.get("healthz"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pickwise Client {self.url}>"


def obtain_token(url: str, username: str, password: str, *, timeout: float = 30.0, verify: bool | str = True) -> str:
    """The API token of ``username`` on the server at ``url`` (``POST /api/token/``)."""
    base = config.normalize_url(url)
    try:
        response = httpx.post(f"{base}/api/token/", data={"username": username, "password": password},
                              headers={"Accept": "application/json", "User-Agent": USER_AGENT}, timeout=timeout,
                              verify=verify)
    except httpx.TimeoutException as exc:
        raise RequestTimeoutError(f"Logging in to {base} timed out.") from exc
    except httpx.TransportError as exc:
        raise NetworkError(f"Cannot reach {base}: {exc}") from exc
    if response.status_code == 400:  # DRF's answer to wrong credentials
        raise AuthenticationError(f"{base} refused the username or password.", status=400,
                                  body=_body(response), method="POST", url="/api/token/")
    if response.is_error:
        from pickwise_client.errors import error_class, parse_error_body

        message, field, errors = parse_error_body(_body(response), reason=response.reason_phrase)
        raise error_class(response.status_code)(message, status=response.status_code, field=field, errors=errors,
                                                body=_body(response), method="POST", url="/api/token/")
    try:
        return str(response.json()["token"])
    except (ValueError, KeyError, TypeError):
        raise APIError(f"{base}/api/token/ did not answer with a token; is this a Pickwise server?",
                       status=response.status_code, method="POST", url="/api/token/") from None


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
