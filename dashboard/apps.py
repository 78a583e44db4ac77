import logging
import sys
from pathlib import Path

from django.apps import AppConfig

# Programs that serve the hub's web (`daphne ...` or `python -m daphne ...`).
WEB_SERVERS = {"daphne", "uvicorn", "gunicorn", "hypercorn"}


def _serving_web() -> bool:
    program = Path(sys.argv[0] if sys.argv else "")
    return program.name in WEB_SERVERS or (
        program.name == "__main__.py" and program.parent.name in WEB_SERVERS
    )


class DashboardConfig(AppConfig):
    name = "dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if _serving_web():
            # Once per web process; runhub prints them itself, the overview shows them to admins.
            from dashboard.exposure import exposure_warnings

            for warning in exposure_warnings():
                logging.getLogger("dashboard.exposure").warning(warning)
