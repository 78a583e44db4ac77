"""The library the hub lends every Python sequence: scramjet-framework-py.

STH hands `run` its `input` as a scramjet `Stream` whether or not the package ships the
framework, so sequences written for STH call `input.map(...)` without bringing it. The hub
itself never imports it: the fork server runs with -S, and the framework is found only by
`find_spec`, which locates a package without running it.

Children cannot read the hub's virtual environment (Landlock hides it, and a child with a user
id of its own may not even pass through to it: a virtualenv under /root). So the worker copies
the framework's files into a folder of the data folder that holds nothing else, readable by all
and writable only by the worker, and the children's Landlock rules grant reading that folder
alone. That is narrower than a rule on site-packages, which would open every dependency of the
hub to sequence code. The folder goes last on the child's sys.path: a package that ships its
own `__pypackages__/scramjet` gets its own.
"""

from __future__ import annotations

import compileall
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from sequences.packages import publish_folder, readable_by_all

DISTRIBUTION = "scramjet-framework-py"
PACKAGE = "scramjet"

log = logging.getLogger(__name__)


def lent_library(root: Path) -> Path | None:
    """A folder under `root` holding only the lent package, made if missing (a folder per
    version, so an upgrade never changes files a running child reads); None, with a warning,
    when the framework is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        log.warning(
            "%s is not installed: Python sequences get input without stream methods", PACKAGE
        )
        return None
    source = Path(next(iter(spec.submodule_search_locations)))
    dest = root / f"{DISTRIBUTION}-{importlib.metadata.version(DISTRIBUTION)}"
    if dest.is_dir():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # children pass through to the library; they may not list the rest
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=root))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes 0700; the folder is on children's sys.path
        shutil.copytree(
            source, staging / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        # Bytecode made here: a child cannot write it, and would otherwise compile the
        # framework again at every start.
        compileall.compile_dir(staging, quiet=1)
        readable_by_all(staging)
        publish_folder(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest
