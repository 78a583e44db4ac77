"""Facts about the host: version and load, in STH's shapes."""

from pathlib import Path
from typing import Any

import psutil

VERSION = "0.1.0"


def version() -> dict[str, Any]:
    return {"service": "sequence-hub", "apiVersion": "v1", "version": VERSION, "build": VERSION}


def load_check(data_dir: Path) -> dict[str, Any]:
    mem = psutil.virtual_memory()
    disk = psutil.disk_usage(str(data_dir))
    load1 = psutil.getloadavg()[0]
    cpus = psutil.cpu_count() or 1
    return {
        "avgLoad": round(100.0 * load1 / cpus, 1),
        "currentLoad": psutil.cpu_percent(interval=None),
        "memFree": mem.available,
        "memUsed": mem.total - mem.available,
        "fsSize": [
            {
                "fs": str(data_dir),
                "type": "",
                "size": disk.total,
                "used": disk.used,
                "available": disk.free,
                "use": disk.percent,
                "mount": str(data_dir),
                "rw": True,
            }
        ],
    }
