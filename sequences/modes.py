"""Observing modes (TMT ESW's Sequence Manager): a configuration naming modes, each with its
sequencers (prefix + script sequence) and the resources it uses; `configure` brings a mode's
sequencers up on sequence components, `shutdown` unloads them, `restart` reloads one.

The configuration is one row (`ObservingModesConfig`), validated whole before it is stored: a
bad one changes nothing. A configured mode is a `ConfiguredMode` row, kept until its shutdown:
its resources are in use while it exists, whatever became of its sequencers (a Killed one is
shown, and `restart` brings it back). Sequencers start through the components' one start path
(`sequencers.load_script`, `unload_script`, `restart`); mode operations are serialised by one
Redis lock, so two configures cannot both take a resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from redis import RedisError

from sequences import live, notices, sequencers
from sequences import sequencer_store as store
from sequences.component_states import ComponentState
from sequences.errors import HubError
from sequences.models import (
    ConfiguredMode,
    ObservingModesConfig,
    Sequence,
    SequenceComponent,
    Sequencer,
    Worker,
)
from sequences.statemachine import State

MAX_SOURCE = 256 * 1024
MAX_MODES = 200
MAX_SEQUENCERS = 100  # per mode
MAX_RESOURCES = 100  # per mode
MAX_ERRORS = 50
MAX_NAME = 200
MODE_RE = re.compile(r"^[A-Za-z0-9_-]+$")
RESOURCE_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
MODE_KEYS = ("sequencers", "resources")
SEQUENCER_KEYS = ("prefix", "script")
# The lock lapses this long after its last renewal (a web process that died holding it frees
# it then); renewed before each sequencer's load or unload, which may wait up to
# HUB_START_TIMEOUT + 25 s, or a shutdown's 15 s.
LOCK_TTL = float(settings.HUB_START_TIMEOUT) + 90.0
LOCK_WAIT = 60.0

CONFIGURED = "Configured"
CONFIGURABLE = "Configurable"
NON_CONFIGURABLE = "NonConfigurable"


# -- the configuration ---------------------------------------------------------------------


def _yaml() -> Any:
    import yaml  # PyYAML: a dependency (pyproject.toml); imported here, used only for YAML

    return yaml


def parse_source(text: str, fmt: str | None = None) -> tuple[Any, str]:
    """The document in `text` and its format (`json` or `yaml`). Without `fmt`, a text whose
    first character is `{` is JSON, anything else YAML. 422 INVALID_CONFIG when unreadable."""
    if len(text.encode("utf-8", "replace")) > MAX_SOURCE:
        raise _invalid([f"the configuration is larger than {MAX_SOURCE // 1024} KiB"])
    if fmt is None:
        fmt = "json" if text.lstrip().startswith("{") else "yaml"
    if fmt not in ("json", "yaml"):
        raise _invalid([f"format: expected json or yaml, got {fmt!r}"])
    try:
        if fmt == "json":
            return json.loads(text), fmt
        yaml = _yaml()
        return yaml.safe_load(text), fmt
    except RecursionError:
        raise _invalid(["the configuration is nested too deeply"]) from None
    except ValueError as exc:  # json.JSONDecodeError
        raise _invalid([f"not valid JSON: {exc}"]) from None
    except Exception as exc:  # yaml.YAMLError and what its constructors raise
        raise _invalid([f"not valid YAML: {exc}"]) from None


def _invalid(errors: list[str]) -> HubError:
    shown = errors[:MAX_ERRORS]
    more = f" (and {len(errors) - len(shown)} more)" if len(errors) > len(shown) else ""
    return HubError(
        422,
        "INVALID_CONFIG",
        "invalid observing modes configuration: " + "; ".join(shown) + more,
        {"errors": shown},
    )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def validate(doc: Any) -> dict[str, dict[str, Any]]:
    """The modes of a parsed document, normalised: `{name: {sequencers: [{prefix, script}],
    resources: [...]}}`. 422 INVALID_CONFIG naming every problem with its path
    (`modes.DarkNight.sequencers[1].prefix: missing`)."""
    errors: list[str] = []
    if not isinstance(doc, dict):
        raise _invalid([f"the configuration must be a mapping with 'modes', got {_kind(doc)}"])
    errors += [f"{_key(k)}: unknown key (expected 'modes')" for k in doc if k != "modes"]
    if "modes" not in doc:
        errors.append("modes: missing")
        raise _invalid(errors)
    modes = doc["modes"]
    if not isinstance(modes, dict):
        errors.append(f"modes: expected a mapping of mode names, got {_kind(modes)}")
        raise _invalid(errors)
    if len(modes) > MAX_MODES:
        raise _invalid([*errors, f"modes: at most {MAX_MODES} modes, got {len(modes)}"])
    out: dict[str, dict[str, Any]] = {}
    for name, mode in modes.items():
        if not isinstance(name, str) or len(name) > MAX_NAME or not MODE_RE.match(name):
            errors.append(
                f"modes.{_key(name)}: a mode name is letters, digits, '_' or '-' (like DarkNight)"
            )
            continue
        found = _mode(f"modes.{name}", mode, errors)
        if found is not None:
            out[name] = found
        if len(errors) > MAX_ERRORS:
            break
    if errors:
        raise _invalid(errors)
    return out


def _key(value: Any) -> str:
    return value[:80] if isinstance(value, str) and value else _show(value)


def _show(value: Any) -> str:
    """A value in a message, cut short: a hostile file must not make a huge answer."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _mode(path: str, mode: Any, errors: list[str]) -> dict[str, Any] | None:
    if not isinstance(mode, dict):
        errors.append(
            f"{path}: expected a mapping with sequencers and resources, got {_kind(mode)}"
        )
        return None
    errors += [f"{path}.{_key(k)}: unknown key" for k in mode if k not in MODE_KEYS]
    seqs = mode.get("sequencers")
    entries: list[dict[str, str]] = []
    if "sequencers" not in mode:
        errors.append(f"{path}.sequencers: missing")
    elif not isinstance(seqs, list) or not seqs:
        errors.append(f"{path}.sequencers: expected a non-empty list, got {_kind(seqs)}")
    elif len(seqs) > MAX_SEQUENCERS:
        errors.append(f"{path}.sequencers: at most {MAX_SEQUENCERS}, got {len(seqs)}")
    else:
        seen: set[str] = set()
        for i, entry in enumerate(seqs):
            found = _sequencer(f"{path}.sequencers[{i}]", entry, errors)
            if found is None:
                continue
            if found["prefix"] in seen:
                errors.append(f"{path}.sequencers[{i}].prefix: {found['prefix']} is listed twice")
            seen.add(found["prefix"])
            entries.append(found)
    resources = mode.get("resources", [])
    names: list[str] = []
    if not isinstance(resources, list):
        errors.append(f"{path}.resources: expected a list of names, got {_kind(resources)}")
    elif len(resources) > MAX_RESOURCES:
        errors.append(f"{path}.resources: at most {MAX_RESOURCES}, got {len(resources)}")
    else:
        for i, res in enumerate(resources):
            where = f"{path}.resources[{i}]"
            if not isinstance(res, str) or len(res) > MAX_NAME or not RESOURCE_RE.match(res):
                errors.append(
                    f"{where}: a resource is a name of letters, digits, '_', '-' or '.' "
                    f"(like IRIS), got {_show(res)}"
                )
            elif res in names:
                errors.append(f"{where}: {res} is listed twice")
            else:
                names.append(res)
    return {"sequencers": entries, "resources": names}


def _sequencer(path: str, entry: Any, errors: list[str]) -> dict[str, str] | None:
    if not isinstance(entry, dict):
        errors.append(f"{path}: expected a mapping with prefix and script, got {_kind(entry)}")
        return None
    errors += [f"{path}.{_key(k)}: unknown key" for k in entry if k not in SEQUENCER_KEYS]
    ok = True
    for key in SEQUENCER_KEYS:
        if key not in entry:
            errors.append(f"{path}.{key}: missing")
            ok = False
    if not ok:
        return None
    prefix, script = entry["prefix"], entry["script"]
    if (
        not isinstance(prefix, str)
        or len(prefix) > sequencers.MAX_NAME
        or not sequencers.NAME_RE.match(prefix)
    ):
        errors.append(
            f"{path}.prefix: must look like 'ESW.darknight': dot-separated parts of letters, "
            f"digits, '_' or '-' (got {_show(prefix)})"
        )
        ok = False
    if not isinstance(script, str) or not script.strip() or len(script) > MAX_NAME:
        errors.append(
            f"{path}.script: expected a sequence name or id (a non-empty string), "
            f"got {_show(script)}"
        )
        ok = False
    return {"prefix": prefix, "script": script.strip()} if ok else None


def set_config(text: str, user: Any, fmt: str | None = None) -> dict[str, Any]:
    """Store a new configuration (JSON or YAML text) once it is valid; what `get_config`
    answers. Configured modes keep what they were configured with until their shutdown."""
    if not isinstance(text, str):
        raise _invalid(["the configuration must be text (JSON or YAML)"])
    if "\x00" in text:
        raise _invalid(["the configuration may not contain NUL characters"])
    doc, fmt = parse_source(text, fmt)
    # Escaped in the text ("\u0000" in JSON, "\0" in YAML), a NUL comes out of parsing: the
    # database stores no NUL in text or JSON, and an error naming the key would carry it too.
    if "\\u0000" in json.dumps(doc, default=str):  # how json writes a NUL
        raise _invalid(["the configuration may not contain NUL characters"])
    modes = validate(doc)
    owner = user if getattr(user, "is_authenticated", False) else None
    stored = [{"name": name, **mode} for name, mode in modes.items()]
    ObservingModesConfig.objects.update_or_create(
        key=1, defaults={"source": text, "format": fmt, "modes": stored, "updated_by": owner}
    )
    announce()
    return get_config()


def get_config() -> dict[str, Any]:
    """`{source, format, modes, updated, updatedBy}`; an empty configuration before any."""
    row = ObservingModesConfig.objects.select_related("updated_by").filter(key=1).first()
    if row is None:
        return {"source": "", "format": "", "modes": {}, "updated": None, "updatedBy": None}
    return {
        "source": row.source,
        "format": row.format,
        "modes": _ordered_modes(row.modes),
        "updated": row.updated.isoformat(),
        "updatedBy": row.updated_by.get_username() if row.updated_by else None,
    }


def _ordered_modes(stored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"]: {"sequencers": m["sequencers"], "resources": m["resources"]} for m in stored}


def _modes() -> dict[str, dict[str, Any]]:
    """The configuration's modes, in its order."""
    row = ObservingModesConfig.objects.filter(key=1).only("modes").first()
    return _ordered_modes(row.modes) if row is not None else {}


def announce() -> None:
    """Tell the Observations and Resources pages to look again (at-most-once)."""
    with contextlib.suppress(Exception):
        notices.send({"type": notices.MODES_CHANGED}, notices.MODES)


# -- statuses ------------------------------------------------------------------------------


def _resolve_script(ref: str) -> tuple[Sequence | None, str]:
    """A script sequence by id, else the newest of that name; (None, why) when there is none
    usable."""
    seq = Sequence.objects.filter(pk=ref).first()
    if seq is None:
        seq = Sequence.objects.filter(name=ref).order_by("-created").first()
    if seq is None:
        return None, f"no sequence named {ref} (nor with that id)"
    if seq.language != "python":
        return None, f"sequence {ref} is a {seq.language} package: scripts are Python"
    return seq, ""


def _missing(
    mode: dict[str, Any], seen: dict[str, tuple[Sequence | None, str]] | None = None
) -> list[dict[str, str]]:
    """The mode's scripts that cannot be found; `seen` remembers look-ups across modes (a
    list of many modes asks for the same few scripts)."""
    seen = {} if seen is None else seen
    out = []
    for entry in mode["sequencers"]:
        ref = entry["script"]
        if ref not in seen:
            seen[ref] = _resolve_script(ref)
        seq, why = seen[ref]
        if seq is None:
            out.append({"prefix": entry["prefix"], "script": entry["script"], "reason": why})
    return out


def _conflicts(
    name: str, resources: list[str], configured: list[ConfiguredMode]
) -> list[dict[str, Any]]:
    wanted = set(resources)
    out = []
    for other in configured:
        if other.name == name:
            continue
        shared = sorted(wanted & set(other.resources))
        if shared:
            out.append({"mode": other.name, "resources": shared})
    return out


def _conflict_text(name: str, conflicts: list[dict[str, Any]]) -> str:
    parts = [f"{', '.join(c['resources'])} in use by mode {c['mode']}" for c in conflicts]
    return f"mode {name} needs resources in use: " + "; ".join(parts)


def _missing_text(name: str, missing: list[dict[str, str]]) -> str:
    parts = [f"{m['script']} for {m['prefix']} ({m['reason']})" for m in missing]
    return f"mode {name} has missing scripts: " + "; ".join(parts)


def step_summary(view: dict[str, Any]) -> dict[str, Any]:
    """How far a sequencer is through its step list, as the Observations page says it:
    `{status: "Step 2 In Progress" | "Step 2 Paused" | "Step 2 Failed" | "All Steps Completed"
    | "Loaded" | "NA", command: the current step's command or None, total}`."""
    steps = view.get("stepList") or []
    state = view.get("state")
    total = len(steps)
    if not steps or state == State.KILLED:
        return {"status": "NA", "command": None, "total": total}
    for i, step in enumerate(steps, 1):
        if step["status"] == "InFlight":
            return {"status": f"Step {i} In Progress", "command": step["command"], "total": total}
        if step["status"] == "Failure":
            return {"status": f"Step {i} Failed", "command": step["command"], "total": total}
    pending = [(i, s) for i, s in enumerate(steps, 1) if s["status"] == "Pending"]
    if not pending:
        return {"status": "All Steps Completed", "command": None, "total": total}
    i, step = pending[0]
    if state == State.LOADED:
        return {"status": "Loaded", "command": step["command"], "total": total}
    if state == State.RUNNING and step["hasBreakpoint"]:
        return {"status": f"Step {i} Paused", "command": step["command"], "total": total}
    return {"status": f"Step {i} In Progress", "command": step["command"], "total": total}


def _room_host(worker: str) -> str:
    """The host a live worker publishes with its free places: its row may be gone (aged out,
    or deleted) until its next beat writes it again."""
    if not worker:
        return ""
    try:
        entries = cast(
            "dict[bytes, bytes]",
            live.sync_client().hgetall(live.room_key(settings.CELERY_TASK_DEFAULT_QUEUE)),
        )
    except RedisError:
        return ""
    for room in live.live_rooms(entries, time.time()):
        if room.name == worker:
            return room.host
    return ""


def _location(row: Sequencer, hosts: dict[str, str] | None = None) -> dict[str, Any]:
    """A sequencer's `{id, prefix, state, component, worker, host, instance, script, step}`."""
    view = store.describe(row)
    worker = view["worker"]
    if hosts is None or worker not in hosts:
        found = Worker.objects.filter(name=worker).values_list(
            "hostname", flat=True
        ).first() or _room_host(worker)
        if hosts is not None:
            hosts[worker] = found or ""
        host = found or ""
    else:
        host = hosts[worker]
    return {
        "id": view["id"],
        "prefix": view["prefix"],
        "state": view["state"],
        "component": view["component"],
        "worker": worker,
        "host": host,
        "instance": view["instance"],
        "script": view["script"],
        "step": step_summary(view),
    }


def _configured_view(row: ConfiguredMode) -> list[dict[str, Any]]:
    ids = [e.get("sequencer") for e in row.sequencers]
    found = sequencers.heal(
        list(
            Sequencer.objects.select_related("script", "component", "instance")
            .prefetch_related("steps")
            .filter(pk__in=[i for i in ids if i])
        )
    )
    by_id = {s.id: s for s in found}
    hosts: dict[str, str] = {}
    out = []
    for entry in row.sequencers:
        seq = by_id.get(entry.get("sequencer") or "")
        script = entry.get("script") or {}
        out.append(
            {
                "prefix": entry["prefix"],
                # The same shape whether configured or not: {ref, id, name}.
                "script": {
                    "ref": script.get("name") or script.get("id"),
                    "id": script.get("id"),
                    "name": script.get("name"),
                },
                "sequencer": _location(seq, hosts) if seq is not None else None,
            }
        )
    return out


def _ordered(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ESW's top-level sequencer (subsystem ESW) first, the rest in the config's order."""
    return sorted(entries, key=lambda e: 0 if e["prefix"].split(".", 1)[0] == "ESW" else 1)


def _mode_json(
    name: str,
    mode: dict[str, Any] | None,
    row: ConfiguredMode | None,
    configured: list[ConfiguredMode],
    seen: dict[str, tuple[Sequence | None, str]] | None = None,
) -> dict[str, Any]:
    if row is not None:
        return {
            "name": name,
            "status": CONFIGURED,
            "reasons": [],
            "conflicts": [],
            "missing": [],
            "resources": row.resources,
            "inConfig": mode is not None,
            "configured": row.created.isoformat(),
            "configuredBy": row.configured_by.get_username() if row.configured_by else None,
            "sequencers": _ordered(_configured_view(row)),
        }
    assert mode is not None
    conflicts = _conflicts(name, mode["resources"], configured)
    missing = _missing(mode, seen)
    reasons = []
    if conflicts:
        reasons.append(_conflict_text(name, conflicts))
    if missing:
        reasons.append(_missing_text(name, missing))
    return {
        "name": name,
        "status": NON_CONFIGURABLE if reasons else CONFIGURABLE,
        "reasons": reasons,
        "conflicts": conflicts,
        "missing": missing,
        "resources": mode["resources"],
        "inConfig": True,
        "configured": None,
        "configuredBy": None,
        "sequencers": _ordered(
            [
                {
                    "prefix": e["prefix"],
                    "script": {"ref": e["script"], "id": None, "name": None},
                    "sequencer": None,
                }
                for e in mode["sequencers"]
            ]
        ),
    }


def _configured_rows() -> list[ConfiguredMode]:
    return list(ConfiguredMode.objects.select_related("configured_by"))


def list_modes() -> list[dict[str, Any]]:
    """Every mode of the configuration (and any configured mode no longer in it), each
    Configured, Configurable or NonConfigurable with its reasons, resources and sequencers."""
    config = _modes()
    configured = _configured_rows()
    rows = {r.name: r for r in configured}
    names = list(config) + [n for n in rows if n not in config]
    seen: dict[str, tuple[Sequence | None, str]] = {}
    return [_mode_json(n, config.get(n), rows.get(n), configured, seen) for n in names]


def get_mode(name: str) -> dict[str, Any]:
    config = _modes()
    configured = _configured_rows()
    rows = {r.name: r for r in configured}
    if name not in config and name not in rows:
        raise _unknown(name)
    return _mode_json(name, config.get(name), rows.get(name), configured)


def mode_of(sequencer_id: str) -> str | None:
    """The configured mode this sequencer serves, if any (its page links to it)."""
    for row in ConfiguredMode.objects.only("name", "sequencers"):
        if any(e.get("sequencer") == sequencer_id for e in row.sequencers):
            return row.name
    return None


def _unknown(name: str) -> HubError:
    return HubError(404, "NOT_FOUND", f"Observing mode {name} not found in the configuration")


def resources() -> list[dict[str, Any]]:
    """Every resource the configuration or a configured mode names: `{name, status: InUse |
    Available, mode: the configured mode using it or null, modes: every mode naming it}`."""
    config = _modes()
    configured = _configured_rows()
    using: dict[str, str] = {}
    for row in configured:
        for res in row.resources:
            using.setdefault(res, row.name)
    named: dict[str, list[str]] = {}
    for name, mode in config.items():
        for res in mode["resources"]:
            named.setdefault(res, []).append(name)
    for res, name in using.items():
        if name not in named.setdefault(res, []):
            named[res].append(name)
    return [
        {
            "name": res,
            "status": "InUse" if res in using else "Available",
            "mode": using.get(res),
            "modes": named[res],
        }
        for res in sorted(named)
    ]


# -- configure, shutdown, restart ----------------------------------------------------------


class _ModesLock:
    """One mode operation at a time, across every web process."""

    def __init__(self) -> None:
        self.lock = live.async_client().lock(
            live.modes_lock_key(), timeout=LOCK_TTL, blocking_timeout=LOCK_WAIT
        )

    async def __aenter__(self) -> _ModesLock:
        if not await self.lock.acquire():
            raise HubError(409, "BUSY", "another observing mode operation is under way; try again")
        return self

    async def renew(self) -> None:
        """Another LOCK_TTL from now, before a step that may wait long."""
        with contextlib.suppress(Exception):
            await self.lock.reacquire()

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.lock.release()


async def _shielded(coro: Any) -> Any:
    """Run to the end even if the caller goes away: a mode half brought up and not recorded
    would hold sequencers no shutdown knows of."""
    return await asyncio.shield(asyncio.ensure_future(coro))


def _plan(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check everything before anything changes: the mode, its resources, its scripts and its
    prefixes. Returns the mode and, for each sequencer, `{prefix, script: Sequence, reuse:
    the live sequencer already serving it or None}`."""
    config = _modes()
    configured = _configured_rows()
    mode = config.get(name)
    if mode is None:
        raise _unknown(name)
    conflicts = _conflicts(name, mode["resources"], configured)
    if conflicts:
        raise HubError(
            409, "CONFLICTING_RESOURCES", _conflict_text(name, conflicts), {"conflicts": conflicts}
        )
    missing = _missing(mode)
    if missing:
        raise HubError(422, "MISSING_SCRIPTS", _missing_text(name, missing), {"missing": missing})
    owners = {
        e["prefix"]: other.name
        for other in configured
        if other.name != name
        for e in other.sequencers
    }
    # This mode's own sequencers, when it is configured already: reused whatever script
    # version they run (a newer upload of the script's name does not make them strangers).
    own = {
        e.get("sequencer") for other in configured if other.name == name for e in other.sequencers
    }
    steps = []
    clashes = []
    for entry in mode["sequencers"]:
        prefix = entry["prefix"]
        seq, _ = _resolve_script(entry["script"])
        assert seq is not None
        if prefix in owners:
            clashes.append(f"{prefix} belongs to configured mode {owners[prefix]}")
            continue
        holder = Sequencer.objects.filter(prefix=prefix).exclude(state=State.KILLED).first()
        if holder is not None and sequencers.heal([holder])[0].state == State.KILLED:
            holder = None
        stranger = holder is not None and holder.id not in own and holder.script_id != seq.id
        if holder is not None and (stranger or holder.component_id is None):
            clashes.append(
                f"a sequencer with prefix {prefix} (id {holder.id}) runs another script "
                f"than {entry['script']}"
            )
            continue
        steps.append({"prefix": prefix, "script": seq, "reuse": holder})
    if clashes:
        raise HubError(
            409,
            "PREFIX_IN_USE",
            f"mode {name} cannot take its prefixes: " + "; ".join(clashes),
            {"prefixes": clashes},
        )
    return mode, steps


def _free_component(prefix: str, taken: set[str]) -> tuple[SequenceComponent, bool]:
    """An Idle component of the prefix's subsystem (`IRIS.` for `IRIS.darknight`), else a new
    one named as ESW names them (`IRIS.IRIS_1`); (component, made now)."""
    subsystem = prefix.split(".", 1)[0]
    for comp in SequenceComponent.objects.filter(
        name__startswith=f"{subsystem}.", state=ComponentState.IDLE
    ).order_by("name"):
        if comp.name not in taken:
            return comp, False
    names = set(
        SequenceComponent.objects.filter(name__startswith=f"{subsystem}.").values_list(
            "name", flat=True
        )
    )
    n = 1
    while f"{subsystem}.{subsystem}_{n}" in names | taken:
        n += 1
    return sequencers.create_component(f"{subsystem}.{subsystem}_{n}"), True


def _entry(seq_json: dict[str, Any], script: Sequence) -> dict[str, Any]:
    return {
        "prefix": seq_json["prefix"],
        "script": {"id": script.id, "name": script.name},
        "sequencer": seq_json["id"],
        "component": seq_json.get("component"),
    }


def _record(name: str, resources: list[str], entries: list[dict[str, Any]], user: Any) -> None:
    owner = user if getattr(user, "is_authenticated", False) else None
    with transaction.atomic():
        ConfiguredMode.objects.update_or_create(
            name=name,
            defaults={"resources": resources, "sequencers": entries, "configured_by": owner},
        )


async def configure(name: str, user: Any) -> dict[str, Any]:
    """Bring a mode's sequencers up: reuse a live sequencer already serving a prefix with the
    same script, else load the script into an Idle component of the subsystem (made when
    there is none). Answers `{mode, status: Configured, resources, sequencers: [{prefix, id,
    component, worker, host, instance, state, script, step}]}`.

    Refuses, changing nothing: 404 for an unknown mode, 409 CONFLICTING_RESOURCES (with the
    modes holding them), 422 MISSING_SCRIPTS, 409 PREFIX_IN_USE. A script that fails to load
    answers 422 LOADING_SCRIPT_FAILED after unloading what this call loaded (components it
    made stay, Idle). Configuring a Configured mode brings back any of its sequencers that
    were Killed."""
    return await _shielded(_configure(name, user))


async def _configure(name: str, user: Any) -> dict[str, Any]:
    async with _ModesLock() as lock:
        mode, steps = await sync_to_async(_plan)(name)
        taken: set[str] = set()
        loaded: list[SequenceComponent] = []
        entries = []
        for step in steps:
            holder: Sequencer | None = step["reuse"]
            if holder is not None:
                view = await sync_to_async(store.describe)(
                    await sequencers.aget_sequencer(holder.id)
                )
                entries.append({**_entry(view, step["script"]), "script": view["script"]})
                continue
            comp, _ = await sync_to_async(_free_component)(step["prefix"], taken)
            taken.add(comp.name)
            await lock.renew()
            answer, status = await sequencers.load_script(
                comp, step["script"].id, step["prefix"], user
            )
            if status != 200:
                for done in loaded:
                    await lock.renew()
                    with contextlib.suppress(HubError):
                        await sequencers.unload_script(done, user)
                msg = answer.get("msg") or answer.get("type") or "refused"
                raise HubError(
                    422,
                    "LOADING_SCRIPT_FAILED",
                    f"mode {name}: loading {step['script'].name or step['script'].id} as "
                    f"{step['prefix']} in component {comp.name} failed: {msg}; what this "
                    "configure had loaded was unloaded",
                    {"prefix": step["prefix"], "component": comp.name, "answer": answer},
                )
            loaded.append(comp)
            entries.append(_entry(answer["sequencer"], step["script"]))
        await sync_to_async(_record)(name, mode["resources"], entries, user)
    await sync_to_async(announce)()
    return await sync_to_async(get_mode)(name)


async def shutdown(name: str, user: Any) -> dict[str, Any]:
    """Unload every sequencer of a configured mode (each → Killed, its component Idle) and
    free its resources. 404 for an unknown mode, 409 NOT_CONFIGURED for one not configured.
    Answers `{mode, status (now), sequencers: [{prefix, id, component, answer}]}`."""
    return await _shielded(_shutdown(name, user))


def _configured(name: str) -> ConfiguredMode | None:
    return ConfiguredMode.objects.filter(name=name).first()


async def _shutdown(name: str, user: Any) -> dict[str, Any]:
    async with _ModesLock() as lock:
        row = await sync_to_async(_configured)(name)
        if row is None:
            if name in await sync_to_async(_modes)():
                raise HubError(409, "NOT_CONFIGURED", f"Observing mode {name} is not configured")
            raise _unknown(name)
        done = []
        errors: list[str] = []
        for entry in row.sequencers:
            await lock.renew()
            answer = await _unload_entry(entry, user, errors)
            done.append(
                {
                    "prefix": entry["prefix"],
                    "id": entry.get("sequencer"),
                    "component": entry.get("component"),
                    "answer": answer,
                }
            )
        if errors:
            raise HubError(
                409,
                "SHUTDOWN_INCOMPLETE",
                f"mode {name} stays configured: " + "; ".join(errors),
                {"sequencers": done},
            )
        await sync_to_async(ConfiguredMode.objects.filter(pk=row.pk).delete)()
    await sync_to_async(announce)()
    status = await sync_to_async(_status_after)(name)
    return {"mode": name, "status": status, "sequencers": done}


def _status_after(name: str) -> str:
    try:
        return str(get_mode(name)["status"])
    except HubError:
        return "NotInConfig"


def _hosting(sequencer_id: str | None) -> SequenceComponent | None:
    """The component hosting this sequencer now, if it is alive."""
    if not sequencer_id:
        return None
    row = Sequencer.objects.select_related("component", "instance").filter(pk=sequencer_id).first()
    if row is None or row.component is None:
        return None
    if sequencers.heal([row])[0].state == State.KILLED:
        return None
    comp = row.component
    hosted = sequencers.hosted_sequencer(comp)
    return comp if hosted is not None and hosted.id == row.id else None


async def _unload_entry(
    entry: dict[str, Any], user: Any, errors: list[str]
) -> dict[str, Any] | None:
    comp = await sync_to_async(_hosting)(entry.get("sequencer"))
    if comp is None:
        return None  # Killed already: nothing to unload
    try:
        answer, status = await sequencers.unload_script(comp, user)
    except HubError as exc:
        errors.append(f"{entry['prefix']}: {exc.message}")
        return {"type": "Error", "msg": exc.message}
    if status != 200:
        errors.append(f"{entry['prefix']}: {answer.get('msg') or answer.get('type')}")
    return answer


async def restart(prefix: str, user: Any) -> dict[str, Any]:
    """Restart one sequencer of a configured mode: the component's RestartScript when it is
    alive (a fresh sequencer, same script and prefix), else its script loaded again (in its
    component, or another Idle one). 404 when no configured mode has the prefix; 422
    LOADING_SCRIPT_FAILED. Answers `{mode, sequencer: location}`."""
    return await _shielded(_restart(prefix, user))


def _owner(prefix: str) -> tuple[ConfiguredMode, int]:
    for row in ConfiguredMode.objects.all():
        for i, entry in enumerate(row.sequencers):
            if entry["prefix"] == prefix:
                return row, i
    raise HubError(404, "NOT_FOUND", f"no configured observing mode has a sequencer {prefix}")


def _idle_component(name: str | None, prefix: str) -> SequenceComponent:
    comp = SequenceComponent.objects.filter(name=name or "").first()
    if comp is not None and comp.state == ComponentState.IDLE:
        return comp
    return _free_component(prefix, set())[0]


def _update_entry(row_id: int, index: int, entry: dict[str, Any]) -> None:
    with transaction.atomic():
        row = ConfiguredMode.objects.select_for_update().get(pk=row_id)
        entries = list(row.sequencers)
        entries[index] = entry
        row.sequencers = entries
        row.save(update_fields=["sequencers"])


async def _restart(prefix: str, user: Any) -> dict[str, Any]:
    async with _ModesLock():
        row, index = await sync_to_async(_owner)(prefix)
        entry = row.sequencers[index]
        comp = await sync_to_async(_hosting)(entry.get("sequencer"))
        if comp is not None:
            answer, status = await sequencers.restart(comp, user)
        else:
            script = entry.get("script") or {}
            comp = await sync_to_async(_idle_component)(entry.get("component"), prefix)
            answer, status = await sequencers.load_script(comp, script.get("id", ""), prefix, user)
        if status != 200:
            msg = answer.get("msg") or answer.get("type") or "refused"
            raise HubError(
                422,
                "LOADING_SCRIPT_FAILED",
                f"restarting {prefix} in component {comp.name} failed: {msg}",
                {"prefix": prefix, "component": comp.name, "answer": answer},
            )
        located = answer["sequencer"]
        new_entry = {
            **entry,
            "sequencer": located["id"],
            "component": located.get("component") or comp.name,
        }
        await sync_to_async(_update_entry)(row.pk, index, new_entry)
        view = await sync_to_async(_location)(await sequencers.aget_sequencer(located["id"]))
    await sync_to_async(announce)()
    return {"mode": row.name, "sequencer": view}
