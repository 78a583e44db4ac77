"""The hub's records: sequences, instances and their streams, workers, sequencers, components."""

import uuid

from django.conf import settings
from django.db import models

from core import protocol


def new_id() -> str:
    return str(uuid.uuid4())


class Sequence(models.Model):
    """An uploaded package: immutable; an overwrite makes a new row with a new id."""

    id = models.CharField(primary_key=True, max_length=64, default=new_id, editable=False)
    name = models.CharField(max_length=200, blank=True)
    version = models.CharField(max_length=100, blank=True)
    description = models.TextField(blank=True)
    config = models.JSONField(default=dict)
    language = models.CharField(max_length=20)
    main = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.BigIntegerField()
    unpacked_size = models.BigIntegerField(default=0)
    files = models.JSONField(default=list)
    root = models.CharField(max_length=200, blank=True)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name or self.id} {self.version}".strip()

    @property
    def storage_name(self) -> str:
        return f"packages/{self.sha256}.tar.gz"


class InstanceStatus(models.TextChoices):
    INITIALIZING = "initializing"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    KILLING = "killing"
    COMPLETED = "completed"
    ERRORED = "errored"
    LOST = "lost"


LIVE_STATUSES = (
    InstanceStatus.INITIALIZING,
    InstanceStatus.STARTING,
    InstanceStatus.RUNNING,
    InstanceStatus.STOPPING,
    InstanceStatus.KILLING,
)
ENDED_STATUSES = (InstanceStatus.COMPLETED, InstanceStatus.ERRORED, InstanceStatus.LOST)


class Instance(models.Model):
    """One run of a sequence (or of a sequencer's script) as a supervised child process."""

    id = models.CharField(primary_key=True, max_length=64, default=new_id, editable=False)
    sequence = models.ForeignKey(
        Sequence, null=True, blank=True, on_delete=models.SET_NULL, related_name="instances"
    )
    sequence_name = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=20, default="sequence")  # sequence | script
    args = models.JSONField(default=list)
    app_config = models.JSONField(default=dict)
    limits = models.JSONField(default=dict)
    # The topics it publishes its output to and reads its input from (STH's provides and
    # requires): named in the start body, or declared by the sequence and granted by its worker.
    output_topic = models.CharField(max_length=128, blank=True)
    input_topic = models.CharField(max_length=128, blank=True)
    # Where it may run (sequences/placement.py): {"labels": [...], "worker": name}, or {}.
    placement = models.JSONField(default=dict, blank=True)
    status = models.CharField(
        max_length=20, choices=InstanceStatus.choices, default=InstanceStatus.INITIALIZING
    )
    worker = models.CharField(max_length=200, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    # The user whose stop or kill request was sent last (its username, kept if the user goes):
    # the worker that ends the instance does not know users, the web does (sequences/outcomes).
    ended_by = models.CharField(max_length=150, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    started = models.DateTimeField(null=True, blank=True)
    ended = models.DateTimeField(null=True, blank=True)
    remove_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The instance this one restarted (POST /instance/:id/restart). One-to-one: an instance is
    # restarted once, so two restarts racing on it cannot both start a copy.
    restarted_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="restart"
    )
    # The start's restart policy (`restart` in the start body, sequences/restarts.py): when it
    # ends lost or failed ("always": also completed), beat starts a copy linked by
    # `restarted_from`, after `restart_backoff` s doubled per restart, at most `restart_max`
    # times in a row; `restart_count` is how many restarts of the chain this one is.
    restart_policy = models.CharField(max_length=12, default="never", db_index=True)
    restart_max = models.IntegerField(default=0)
    restart_backoff = models.FloatField(default=0)
    restart_count = models.IntegerField(default=0)

    class Meta:
        ordering = ["-created"]
        # The console's lists: one status (or one sequence's runs), newest first, a keyset
        # page at a time; the status one also serves the overview's counts by status.
        indexes = [
            models.Index(fields=["status", "created"], name="inst_status_created"),
            models.Index(fields=["sequence", "created"], name="inst_sequence_created"),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES

    @property
    def outcome(self) -> str | None:
        """How it ended (a core.protocol.Ending name), or None while it runs."""
        found = protocol.ending(self.status, self.exit_code, self.reason)
        return found[0] if found else None


class StreamChunk(models.Model):
    """A slice of an instance's stdout/stderr/output/log, numbered per stream from 0."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="chunks")
    stream = models.CharField(max_length=10)
    seq = models.IntegerField()
    data = models.BinaryField()
    # When the worker read the chunk from the child (the console's per-line time gutter);
    # empty for chunks stored before the hub recorded it.
    created = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["instance", "stream", "seq"], name="chunk_unique_seq")
        ]

    def __str__(self) -> str:
        return f"{self.instance_id}/{self.stream}#{self.seq}"


class InstanceEvent(models.Model):
    """A named event, emitted by the sequence (`out`) or sent into it (`in`)."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="events")
    direction = models.CharField(max_length=3)
    name = models.CharField(max_length=200)
    message = models.JSONField(null=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["instance", "direction", "name"])]

    def __str__(self) -> str:
        return f"{self.instance_id} {self.direction} {self.name}"


class HubIdentity(models.Model):
    """The hub's id, one row made at its first start (sequences/hubs.py): the namespace of
    everything the hub keeps in Redis, kept with the database because every web and worker
    process of the hub shares the database (not the data folder)."""

    key = models.PositiveSmallIntegerField(primary_key=True, default=1)  # the one row: 1
    hub_id = models.CharField(max_length=40, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.hub_id


class Worker(models.Model):
    """A worker node's supervisor, as last seen through its heartbeat."""

    name = models.CharField(max_length=200, unique=True)
    hostname = models.CharField(max_length=200)
    pid = models.IntegerField()
    capacity = models.IntegerField()
    running = models.IntegerField(default=0)
    started = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField()
    stopped = models.DateTimeField(null=True, blank=True)
    # What confines its children, as the worker found it at start (runner/launch.py:
    # sandbox_report): {"summary", "landlock", "closed_ports", "user", "network", "cgroups"}.
    sandbox = models.JSONField(default=dict, blank=True)
    # Its HUB_WORKER_LABELS ("gpu", "zone=a"), which a start's placement may ask for.
    labels = models.JSONField(default=list, blank=True)
    # A drain (`POST /worker/:name/drain`): when the worker took it and until when its
    # instances may run; `drained` when the last one ended and the worker went on to exit.
    draining = models.DateTimeField(null=True, blank=True)
    drain_deadline = models.DateTimeField(null=True, blank=True)
    drained = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return self.name


class SequenceComponent(models.Model):
    """A named slot (`ESW.primary`) hosting at most one sequencer."""

    name = models.CharField(max_length=200, unique=True)
    state = models.CharField(max_length=20, default="Idle")  # Idle | Running
    # Why it went Idle by itself (its sequencer was killed under it: worker lost or shut down).
    reason = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Sequencer(models.Model):
    """A long-lived controller running one script; its record stays after it is Killed."""

    id = models.CharField(primary_key=True, max_length=64, default=new_id, editable=False)
    prefix = models.CharField(max_length=200, db_index=True)
    script = models.ForeignKey(Sequence, null=True, on_delete=models.SET_NULL)
    instance = models.ForeignKey(Instance, null=True, blank=True, on_delete=models.SET_NULL)
    component = models.ForeignKey(
        SequenceComponent,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="sequencers",
    )
    state = models.CharField(max_length=20, default="Idle")
    processing = models.CharField(max_length=40, blank=True)  # command whose handler runs
    run_id = models.CharField(max_length=64, blank=True)
    run_result = models.JSONField(null=True, blank=True)
    # How the last run was cut short, statemachine.RUN_ABORTED or RUN_STOPPED, else "".
    run_end = models.CharField(max_length=12, blank=True)
    has_step_list = models.BooleanField(default=False)
    reason = models.CharField(max_length=500, blank=True)
    # The handler call in progress (statemachine.PendingCall as JSON): survives a restart.
    pending = models.JSONField(null=True, blank=True)
    # Bumped on every persisted change: event streams and pages tell old news from new.
    version = models.IntegerField(default=0)
    # What `script(sequencer)` registered (child message 3021): setup, observe, hooks.
    handlers = models.JSONField(default=dict, blank=True)
    # The sequencer whose script last commanded this one (docs/scripts.md): with the reverse
    # `downstreams`, what the sequencer page lists as its upstream and downstreams.
    upstream = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="downstreams"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    ended = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["prefix", "-created"]

    def __str__(self) -> str:
        return self.prefix

    @property
    def shown_state(self) -> str:
        return "Processing" if self.processing else self.state


class Step(models.Model):
    sequencer = models.ForeignKey(Sequencer, on_delete=models.CASCADE, related_name="steps")
    position = models.IntegerField()
    step_id = models.CharField(max_length=64)
    type = models.CharField(max_length=10)
    command = models.CharField(max_length=200)
    params = models.JSONField(default=dict)
    status = models.CharField(max_length=10, default="Pending")
    has_breakpoint = models.BooleanField(default=False)
    message = models.TextField(blank=True)
    started = models.DateTimeField(null=True, blank=True)
    ended = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["position"]
        indexes = [models.Index(fields=["sequencer", "position"])]

    def __str__(self) -> str:
        return f"{self.type} {self.command} ({self.status})"


class SequencerTransition(models.Model):
    sequencer = models.ForeignKey(Sequencer, on_delete=models.CASCADE, related_name="transitions")
    from_state = models.CharField(max_length=20)
    to_state = models.CharField(max_length=20)
    command = models.CharField(max_length=40)
    response = models.JSONField(null=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Set instead of `user` when another sequencer's script sent the command:
    # `{"id", "prefix", "runId", "step"}` of the upstream, as its supervisor signed it.
    upstream = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"{self.from_state} -> {self.to_state} on {self.command}"


class ObservingModesConfig(models.Model):
    """The observing modes configuration (docs/scripts.md, "Observing modes"): one row, the
    source as the admin wrote it (JSON or YAML, comments kept for the editor) and its
    validated form, which is what configure reads."""

    key = models.PositiveSmallIntegerField(primary_key=True, default=1)  # the one row: 1
    source = models.TextField()
    format = models.CharField(max_length=4)  # json | yaml
    # [{name, sequencers: [{prefix, script}], resources}]: a list, as PostgreSQL's jsonb would
    # not keep the order of a mapping's keys, and the pages list modes in the config's order.
    modes = models.JSONField(default=list)
    updated = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"observing modes ({len(self.modes)})"


class ConfiguredMode(models.Model):
    """A configured observing mode: what configure brought up, kept until shutdown. Its
    resources are in use while the row exists, whatever became of its sequencers."""

    name = models.CharField(max_length=200, unique=True)
    resources = models.JSONField(default=list)
    # [{prefix, script: {id, name}, sequencer: id, component: name}], in the config's order.
    sequencers = models.JSONField(default=list)
    configured_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
