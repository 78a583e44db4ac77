import logging
import sys
from pathlib import Path

from django.apps import AppConfig

# Programs that serve the hub's web (`daphne ...` or `python -m daphne ...`).
WEB_SERVERS = {"daphne", "uvicorn", "gunicorn", "hypercorn"}
# And those that serve it at all: Celery's worker and beat.
HUB_SERVERS = WEB_SERVERS | {"celery"}


def _running(programs: set[str]) -> bool:
    program = Path(sys.argv[0] if sys.argv else "")
    return (
        program.name in programs
        or (program.name == "__main__.py" and program.parent.name in programs)
        # `python -m dashboard.serve`: daphne on uvloop (dashboard/processes.py:web_argv)
        or (
            program.name == "serve.py"
            and program.parent.name == "dashboard"
            and "daphne" in programs
        )
    )


class DashboardConfig(AppConfig):
    name = "dashboard"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Counts the starts this process pushes from the first one on (sequences.start_watch).
        from dashboard import metrics  # noqa: F401

        if _running(HUB_SERVERS):
            # At start, not at the first request or task that would sign something.
            from dashboard.data_dir import missing_secrets_error

            error = missing_secrets_error()
            if error is not None:
                raise error
        if _running(WEB_SERVERS):
            # Once per web process; runhub prints them itself, the overview shows them to admins.
            from dashboard.exposure import exposure_warnings

            for warning in exposure_warnings():
                logging.getLogger("dashboard.exposure").warning(warning)
