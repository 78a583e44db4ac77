"""WebSocket consumers of the console: each sends HTML fragments that htmx swaps by id.

One group per watched object or list (named in `sequences.notices`). Right after `accept()`
every consumer sends a snapshot of what its page shows, so a page that reconnects (htmx's ws
extension retries on its own) heals itself. The channel layer is at-most-once: events only say
"look again", the fragments come from the database.

The instance consumer follows the streams itself (`sequences.streams.follow`, from the cursor
its snapshot ended at) and coalesces lines: at most every FLUSH_SECONDS it sends at most
MAX_LINES_PER_FLUSH lines per stream, the newest, and says how many it left out, so a sequence
printing 100 000 lines a second cannot flood the socket or the browser. When a stream ends,
its last lines are always sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections import deque
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.access import RANK, user_role
from accounts.identity import current_generation
from dashboard import logs
from dashboard.views import components as component_pages
from dashboard.views import instances as instance_pages
from dashboard.views import modes as mode_pages
from dashboard.views import overview
from dashboard.views import sequencers as sequencer_pages
from dashboard.views import topics as topic_pages
from dashboard.views import workers as worker_pages
from sequences import notices, resources, sequencers, streams, topics
from sequences.errors import HubError
from sequences.instances import get_instance
from sequences.models import Instance

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.02
# An open page is checked against changes of who may see it: every ACCESS_POLL_SECONDS the
# counter that token, user and group changes and logouts bump (one Redis GET); on a change, and
# every ACCESS_RECHECK_SECONDS in any case (a session that simply expired), the session, the
# user and the role are read again.
ACCESS_POLL_SECONDS = 2.0
ACCESS_RECHECK_SECONDS = 60.0
MAX_LINES_PER_FLUSH = 200
DEBOUNCE_SECONDS = 0.25
REFUSED = 4003  # close code for "not allowed"; htmx's ws extension does not retry on it
PANE = "instances/_pane.html"  # one stream's log on the page; its partials are the live updates
# Topics have no notices (a notice per chunk would flood the channel layer, and a rate is a
# change over time anyway): their page looks at the totals this often.
TOPIC_POLL_SECONDS = 2.0
WORKER_POLL_SECONDS = 5.0
TOPIC_TAIL = "topics/detail.html"


def render_fragments(parts: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(render_to_string(name, context) for name, context in parts)


class LiveConsumer(AsyncWebsocketConsumer):
    """Checks the role as the pages do, joins its groups, sends a snapshot, re-renders on events."""

    needed_role = "viewer"

    async def connect(self) -> None:
        self.generation = await current_generation()
        user = self.scope.get("user")
        self.role = await database_sync_to_async(user_role)(user)
        if RANK[self.role] < RANK[self.needed_role]:
            await self.close(code=REFUSED)
            return
        self.groups_joined: list[str] = []
        self._pending: asyncio.TimerHandle | None = None
        self._render_lock = asyncio.Lock()
        try:
            await self.setup()
        except LookupError:
            await self.close(code=4004)
            return
        for group in self.watch_groups():
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
        await self.accept()
        self._access_task = asyncio.ensure_future(self.watch_access())
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)
        pending = getattr(self, "_pending", None)
        if pending is not None:
            pending.cancel()
        access = getattr(self, "_access_task", None)
        if access is not None:
            access.cancel()
        await self.teardown()

    async def watch_access(self) -> None:
        """Close the page's socket once its user may no longer see it; redraw on a new role."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            await asyncio.sleep(ACCESS_POLL_SECONDS)
            generation = await current_generation()
            due = loop.time() - checked >= ACCESS_RECHECK_SECONDS
            if generation == self.generation and generation is not None and not due:
                continue
            self.generation, checked = generation, loop.time()
            try:
                role = await database_sync_to_async(self.current_role)()
            except Exception:
                log.exception("re-checking a console socket's access failed; checking again")
                self.generation = None
                continue
            if RANK[role] < RANK[self.needed_role]:
                await self.close(code=REFUSED)
                return
            if role != self.role:
                self.role = role
                await self.send_snapshot()  # buttons follow the new role

    def current_role(self) -> str:
        """The role the connection's session stands for now ('none' once it is gone)."""
        from importlib import import_module

        from django.conf import settings
        from django.contrib.auth import get_user_model

        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            return user_role(user)
        session = self.scope.get("session")
        if session is None or not session.session_key:
            return "none"
        # Read afresh: a logout deletes the row, an expired one no longer loads.
        engine = import_module(settings.SESSION_ENGINE)
        stored = engine.SessionStore(session.session_key).load()
        if stored.get("_auth_user_id") != str(user.pk):
            return "none"
        fresh = get_user_model().objects.filter(pk=user.pk, is_active=True).first()
        return user_role(fresh) if fresh is not None else "none"

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        # Pages only listen; actions go through the same POST views as without JavaScript.
        return

    # -- for subclasses ---------------------------------------------------------------------
    async def setup(self) -> None:
        """Read the URL; raise LookupError for an unknown object."""

    async def teardown(self) -> None:
        pass

    def watch_groups(self) -> list[str]:
        return []

    def fragments(self) -> str:
        """The HTML of every region this page keeps live (runs in a thread: ORM allowed)."""
        return ""

    async def send_snapshot(self) -> None:
        async with self._render_lock:
            html = await database_sync_to_async(self.fragments)()
        if html:
            await self.send(text_data=html)

    def base_context(self) -> dict[str, Any]:
        cookies = self.scope.get("cookies") or {}
        return {
            "can_operate": RANK[self.role] >= RANK["operator"],
            "can_admin": RANK[self.role] >= RANK["admin"],
            "hub_role": self.role,
            # Lets re-rendered forms keep working as plain POSTs too.
            "csrf_token": cookies.get("csrftoken", ""),
        }

    debounce = DEBOUNCE_SECONDS

    def refresh_soon(self) -> None:
        """Coalesce bursts of events into one re-render."""
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.call_later(self.debounce, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._refresh_task = asyncio.ensure_future(self.send_snapshot())

    # Channel-layer events (notices.INSTANCE_CHANGED, notices.SEQUENCER_CHANGED): any change
    # means "look again".
    async def instance_changed(self, event: dict[str, Any]) -> None:
        self.refresh_soon()

    async def sequencer_changed(self, event: dict[str, Any]) -> None:
        self.refresh_soon()


class OverviewConsumer(LiveConsumer):
    def watch_groups(self) -> list[str]:
        return [notices.INSTANCES, notices.SEQUENCERS]

    def fragments(self) -> str:
        context = {**overview.overview_context(), **self.base_context()}
        names = ("counts", "trends", "running", "ended", "sequencers", "workers", "recent")
        return render_fragments([(f"overview.html#{n}", context) for n in names])


class InstanceListConsumer(LiveConsumer):
    async def setup(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.params = instance_pages.list_params(query)

    def watch_groups(self) -> list[str]:
        return [notices.INSTANCES]

    def fragments(self) -> str:
        context = {**instance_pages.list_context(self.params), **self.base_context()}
        return render_to_string("instances/_rows_table.html", context)


class StreamFollower:
    """One stream of one instance: the lines read but not sent yet, and how many were left out."""

    def __init__(
        self,
        name: str,
        splitter: logs.LineSplitter,
        times: dict[int, datetime.datetime | None] | None = None,
    ) -> None:
        self.name = name
        self.splitter = splitter
        self.lines: deque[tuple[logs.Place, bytes]] = deque(maxlen=MAX_LINES_PER_FLUSH)
        self.skipped = 0
        self.partial_sent: bytes = splitter.current
        self.done = False
        # When each chunk arrived, by number, for the time gutter: the database's times for
        # the chunk the unfinished line started in, this process's clock for what follows.
        self.times: dict[int, datetime.datetime | None] = dict(times or {})

    def feed(self, chunk: bytes) -> None:
        self.times[self.splitter.seq] = timezone.now()
        self.add(self.splitter.feed(chunk))

    def add(self, lines: list[tuple[logs.Place, bytes]]) -> None:
        overflow = len(self.lines) + len(lines) - MAX_LINES_PER_FLUSH
        if overflow > 0:
            self.skipped += overflow
        self.lines.extend(lines)

    def take(self) -> str:
        """The fragment for the lines gathered since the last flush ('' when nothing changed)."""
        parts: list[tuple[str, dict[str, Any]]] = []
        if self.lines or self.skipped:
            rendered = logs.render_lines(list(self.lines), self.times, self.name)
            pane: dict[str, Any] = {"name": self.name, "lines": rendered}
            parts.append((f"{PANE}#new-lines", {"pane": pane, "skipped": self.skipped}))
            self.lines.clear()
            self.skipped = 0
            # Only the unfinished line's chunk can still be asked for.
            start = self.splitter.start[0]
            self.times = {start: self.times.get(start)}
        current = self.splitter.current
        if current != self.partial_sent:
            # The unfinished last line (a prompt, a progress bar) shows too, replaced in place.
            place = self.splitter.start
            line = (
                logs.render_lines([(place, current)], self.times, self.name)[0] if current else None
            )
            pane = {"name": self.name, "partial": line}
            parts.append((f"{PANE}#partial-line", {"pane": pane, "oob": True}))
            self.partial_sent = current
        return render_fragments(parts)


class InstanceConsumer(LiveConsumer):
    async def setup(self) -> None:
        self.iid = self.scope["url_route"]["kwargs"]["iid"]
        # `?logs=1`: only the streams (the sequencer page shows its script's log this way).
        self.logs_only = b"logs=1" in self.scope.get("query_string", b"")
        exists = await database_sync_to_async(Instance.objects.filter(pk=self.iid).exists)()
        if not exists:
            raise LookupError(self.iid)
        self.followers: dict[str, StreamFollower] = {}
        self.tasks: list[asyncio.Task] = []
        self.overlay: dict[str, Any] = {}

    def watch_groups(self) -> list[str]:
        return [notices.instance_group(self.iid)]

    def status_fragments(self) -> str:
        instance = get_instance(self.iid)
        if instance.is_live and self.overlay:
            # The worker tells us before its batched database write lands.
            instance.status = self.overlay.get("status", instance.status)
            if "exitcode" in self.overlay:
                instance.exit_code = self.overlay["exitcode"]
            instance.reason = self.overlay.get("reason", instance.reason)
        context = {**instance_pages.status_context(instance), **self.base_context()}
        context.update(instance_pages.resources_context(instance))
        return render_fragments(
            [
                ("instances/detail.html#status", context),
                ("instances/detail.html#resources", context),
                ("instances/detail.html#events", context),
            ]
        )

    def resources_fragment(self, samples: list[resources.Sample]) -> str:
        context = instance_pages.resources_context(get_instance(self.iid), samples)
        return render_to_string("instances/detail.html#resources", context)

    async def resource_loop(self) -> None:
        """While the instance runs, redraw its charts when the worker added a sample (the
        status snapshot redraws them on every change besides)."""
        seen: tuple[int, float] | None = None
        while not all(f.done for f in self.followers.values()):
            await asyncio.sleep(max(1.0, settings.HUB_SAMPLE_SECONDS))
            try:
                samples = await resources.aread_samples(self.iid)
                mark = (len(samples), samples[-1].at if samples else 0.0)
                if mark != seen:
                    seen = mark
                    html = await database_sync_to_async(self.resources_fragment)(samples)
                    await self.send(text_data=html)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("redrawing the resources of %s failed", self.iid)

    def fragments(self) -> str:
        return "" if self.logs_only else self.status_fragments()

    def log_snapshot(self) -> tuple[str, dict[str, logs.Window]]:
        """The page's log panes again (their lines and "load earlier" links), and the window
        each stream's following starts after."""
        instance = get_instance(self.iid)
        parts: list[tuple[str, dict[str, Any]]] = []
        windows = {}
        for pane in instance_pages.stream_windows(self.iid):
            windows[pane["name"]] = pane["window"]
            parts.append((f"{PANE}#lines", {"pane": pane, "oob": True}))
            button = {"instance": instance, "stream": pane["name"], "earlier": pane["earlier"]}
            parts.append(("instances/_earlier_button.html", {**button, "oob": True}))
        return render_fragments(parts), windows

    async def send_snapshot(self) -> None:
        await super().send_snapshot()
        if self.followers:
            return
        # First connect: the last lines of each stream, then follow each from where they end.
        html, windows = await database_sync_to_async(self.log_snapshot)()
        for stream, window in windows.items():
            splitter = logs.LineSplitter(window.next_seq, window.pending)
            times = {splitter.start[0]: window.times.get(splitter.start[0])}
            follower = StreamFollower(stream, splitter, times)
            follower.partial_sent = b""  # the snapshot did not draw it: the first flush does
            self.followers[stream] = follower
        await self.send(text_data=html)
        self.lines_ready = asyncio.Event()
        self.lines_ready.set()  # the first flush draws the partial line the snapshot left out
        for stream, window in windows.items():
            self.tasks.append(asyncio.ensure_future(self.follow(stream, window.next_seq)))
        self.tasks.append(asyncio.ensure_future(self.flush_loop()))
        if not self.logs_only:
            self.tasks.append(asyncio.ensure_future(self.resource_loop()))

    async def follow(self, stream: str, cursor: int) -> None:
        follower = self.followers[stream]
        try:
            async for chunk in streams.follow(self.iid, stream, cursor):
                follower.feed(chunk)
                self.lines_ready.set()
            follower.add(follower.splitter.finish())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following %s of %s failed", stream, self.iid)
        finally:
            follower.done = True
            self.lines_ready.set()

    async def flush_loop(self) -> None:
        # Leading edge: lines after a quiet spell go out at once; then at most one message per
        # FLUSH_SECONDS, so a flood is still coalesced.
        while True:
            await self.lines_ready.wait()
            self.lines_ready.clear()
            html = "".join(f.take() for f in self.followers.values())
            if html:
                await self.send(text_data=html)
            if all(f.done for f in self.followers.values()):
                html = "".join(f.take() for f in self.followers.values())
                if html:
                    await self.send(text_data=html)
                # The database has the final status by now (or very soon).
                await asyncio.sleep(0.3)
                self.overlay = {}
                await LiveConsumer.send_snapshot(self)
                return
            await asyncio.sleep(FLUSH_SECONDS)

    async def teardown(self) -> None:
        for task in getattr(self, "tasks", []):
            task.cancel()
        for task in getattr(self, "tasks", []):
            with contextlib.suppress(BaseException):
                await task

    async def instance_changed(self, event: dict[str, Any]) -> None:
        self.overlay.update(
            {k: v for k, v in event.items() if k in ("status", "exitcode", "reason")}
        )
        if self.logs_only:
            return
        await LiveConsumer.send_snapshot(self)
        # Timestamps come with the worker's next database write.
        self.refresh_soon()


class SequencerListConsumer(LiveConsumer):
    def watch_groups(self) -> list[str]:
        return [notices.SEQUENCERS]

    def fragments(self) -> str:
        context = {**sequencer_pages.list_context(), **self.base_context()}
        return render_to_string("sequencers/list.html#table", context)


class SequencerConsumer(LiveConsumer):
    """State, command buttons, step list and transitions of one sequencer."""

    debounce = 0.05  # step colours should follow the engine closely

    async def setup(self) -> None:
        ident = self.scope["url_route"]["kwargs"]["ident"]
        try:
            row = await sequencers.aget_sequencer(ident)
        except HubError:
            raise LookupError(ident) from None
        self.sid = row.id
        # Its upstream and downstreams as the page opens: their state changes redraw the
        # links too (a link made later shows with this sequencer's next change).
        links = await database_sync_to_async(sequencers.links)(row)
        linked = [links["upstream"]] if links["upstream"] else []
        self.linked = [d["id"] for d in linked + links["downstreams"]]

    def watch_groups(self) -> list[str]:
        return [notices.sequencer_group(s) for s in [self.sid, *self.linked]]

    def fragments(self) -> str:
        row = sequencers.get_sequencer(self.sid)
        context = {**sequencer_pages.detail_context(row), **self.base_context(), "oob": True}
        names = ["state", "steps", "history", "links"]
        if context["can_operate"]:
            names += ["step-select", "editor-buttons"]  # only operators have the editor
        return render_fragments([(f"sequencers/detail.html#{n}", context) for n in names])


class ComponentListConsumer(LiveConsumer):
    """Components change with their sequencers and with component commands (COMPONENTS)."""

    def watch_groups(self) -> list[str]:
        return [notices.SEQUENCERS, notices.COMPONENTS]

    async def components_changed(self, event: dict[str, Any]) -> None:
        self.refresh_soon()

    def fragments(self) -> str:
        context = {**component_pages.list_context(), **self.base_context()}
        return render_to_string("components/list.html#table", context)


class ObservationsConsumer(LiveConsumer):
    """Modes, their sequencers' states and current steps: sequencer changes (SEQUENCERS) and
    mode operations (MODES) redraw it."""

    def watch_groups(self) -> list[str]:
        return [notices.SEQUENCERS, notices.COMPONENTS, notices.MODES]

    async def components_changed(self, event: dict[str, Any]) -> None:
        self.refresh_soon()

    async def modes_changed(self, event: dict[str, Any]) -> None:
        self.refresh_soon()

    def fragments(self) -> str:
        context = {**mode_pages.observations_context(), **self.base_context()}
        return render_to_string("modes/observations.html#modes", context)


class ResourcesConsumer(LiveConsumer):
    """Resources change with mode operations (MODES)."""

    def watch_groups(self) -> list[str]:
        return [notices.MODES]

    async def modes_changed(self, event: dict[str, Any]) -> None:
        self.refresh_soon()

    def fragments(self) -> str:
        context = {**mode_pages.resources_context(), **self.base_context()}
        return render_to_string("modes/resources.html#table", context)


class TopicListConsumer(LiveConsumer):
    """The topics table and the pipeline, looked at every TOPIC_POLL_SECONDS: the rates are
    the change of each topic's totals since this socket's previous look. Instances starting
    and ending (INSTANCES) redraw at once, as they change the pipeline."""

    async def setup(self) -> None:
        self.looks: topic_pages.Looks | None = None
        self.poller: asyncio.Task | None = None

    def watch_groups(self) -> list[str]:
        return [notices.INSTANCES]

    async def send_snapshot(self) -> None:
        rows = await topics.list_topics()
        now = asyncio.get_running_loop().time()
        async with self._render_lock:
            before, self.looks = self.looks, topic_pages.looks_of(rows, now)
            html = await database_sync_to_async(self.render)(rows, before, now)
        await self.send(text_data=html)
        if self.poller is None:
            self.poller = asyncio.ensure_future(self.poll())

    def render(self, rows: list[dict[str, Any]], before: Any, now: float) -> str:
        context = {**topic_pages.list_context(rows, before, now), **self.base_context()}
        return render_fragments(
            [("topics/list.html#table", context), ("topics/list.html#pipeline", context)]
        )

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(TOPIC_POLL_SECONDS)
            try:
                await self.send_snapshot()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("looking at the topics failed; trying again")

    async def teardown(self) -> None:
        poller = getattr(self, "poller", None)
        if poller is not None:
            poller.cancel()


class TopicTailConsumer(LiveConsumer):
    """One topic's tail: the last lines again on connect, then every chunk that follows,
    coalesced as an instance's log is (at most MAX_LINES_PER_FLUSH lines per FLUSH_SECONDS,
    the newest, with how many were left out)."""

    async def setup(self) -> None:
        self.name = self.scope["url_route"]["kwargs"]["name"]
        self.topic = await topics.get(self.name) if topics.is_name(self.name) else None
        if self.topic is None:
            raise LookupError(self.name)
        self.task: asyncio.Task | None = None

    async def send_snapshot(self) -> None:
        if self.task is not None:
            return  # a role change: the tail has no buttons
        assert self.topic is not None
        chunks, cursor = await topics.tail_cursor(self.name, topic_pages.TAIL_CHUNKS)
        lines, splitter = topic_pages.render_tail(chunks, self.topic.content_type)
        html = render_to_string(f"{TOPIC_TAIL}#lines", {"lines": lines, "oob": True})
        await self.send(text_data=html)
        self.task = asyncio.ensure_future(self.follow(cursor, splitter))

    async def follow(self, cursor: bytes | str, splitter: logs.LineSplitter) -> None:
        follower = StreamFollower("topic", splitter)
        ready = asyncio.Event()

        async def read() -> None:
            try:
                async for chunk in topics.read(self.name, after=cursor):
                    follower.add(splitter.feed(chunk))
                    ready.set()
                follower.add(splitter.finish())
            finally:
                follower.done = True
                ready.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                await ready.wait()
                ready.clear()
                html = self.take(follower)
                if html:
                    await self.send(text_data=html)
                if follower.done:
                    text = "The topic's stream ended, or the topic was deleted."
                    html = render_to_string(f"{TOPIC_TAIL}#ended", {"text": text})
                    await self.send(text_data=html)
                    return
                await asyncio.sleep(FLUSH_SECONDS)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    @staticmethod
    def take(follower: StreamFollower) -> str:
        parts: list[tuple[str, dict[str, Any]]] = []
        if follower.lines or follower.skipped:
            lines = logs.render_lines(list(follower.lines))
            parts.append((f"{TOPIC_TAIL}#new-lines", {"lines": lines, "skipped": follower.skipped}))
            follower.lines.clear()
            follower.skipped = 0
        current = follower.splitter.current
        if current != follower.partial_sent:
            line = logs.render_lines([((0, 0), current)])[0] if current else None
            parts.append((f"{TOPIC_TAIL}#partial-line", {"partial": line, "oob": True}))
            follower.partial_sent = current
        return render_fragments(parts)

    async def teardown(self) -> None:
        task = getattr(self, "task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


class WorkerListConsumer(LiveConsumer):
    """The workers' cards: again when instances or sequencers change (what each runs), and
    every WORKER_POLL_SECONDS for what no notice announces (heartbeats, free places, drains)."""

    async def setup(self) -> None:
        self.poller: asyncio.Task | None = None

    def watch_groups(self) -> list[str]:
        return [notices.INSTANCES, notices.SEQUENCERS]

    def fragments(self) -> str:
        context = {**worker_pages.list_context(), **self.base_context()}
        return render_to_string("workers/list.html#cards", context)

    async def send_snapshot(self) -> None:
        await super().send_snapshot()
        if self.poller is None:
            self.poller = asyncio.ensure_future(self.poll())

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(WORKER_POLL_SECONDS)
            try:
                await super().send_snapshot()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("looking at the workers failed; trying again")

    async def teardown(self) -> None:
        poller = getattr(self, "poller", None)
        if poller is not None:
            poller.cancel()
