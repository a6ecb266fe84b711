#!/usr/bin/env python
"""Django's command-line utility for Pickwise."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings
    from django.core.management import execute_from_command_line

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        # The embedded default (`make run`): its folder, made here before a command opens the file, not
        # when some module is imported. Celery makes its own folders when it first reads its configuration.
        Path(database["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
