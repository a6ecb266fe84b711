"""Python client for the Pickwise API.

    from pickwise_client import Client

    client = Client.login("http://127.0.0.1:8000", "demo-admin", "pickwise-admin")
    for project in client.projects.list():
        print(project["id"], project["name"])
"""

from __future__ import annotations

from pickwise_client.client import Client, __version__, obtain_token
from pickwise_client.errors import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    FieldError,
    JobFailedError,
    NetworkError,
    NotFoundError,
    NotLoggedInError,
    PermissionDeniedError,
    PickwiseError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
    WaitTimeoutError,
)

__all__ = [
    "APIError",
    "AuthenticationError",
    "Client",
    "ConfigurationError",
    "FieldError",
    "JobFailedError",
    "NetworkError",
    "NotFoundError",
    "NotLoggedInError",
    "PermissionDeniedError",
    "PickwiseError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServerError",
    "ServiceUnavailableError",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
    "obtain_token",
]
