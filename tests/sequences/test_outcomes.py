"""Outcomes (issue 17, item 1): the rule that names how an instance ended, the database filter
that must agree with it, the words people read, and how a sequencer's run is labelled."""

from __future__ import annotations

import pytest

from core.protocol import (
    DRAIN_DEADLINE,
    EXIT_REASONS,
    STOP_TIMEOUT,
    UNKNOWN_EXIT,
    WORKER_LOST,
    WORKER_SHUTDOWN,
    EndedBy,
    Ending,
    Exit,
    ending,
    outcome,
)
from sequences import outcomes
from sequences.models import Instance
from sequences.statemachine import (
    Completed,
    Error,
    Snapshot,
    State,
    next_step,
    run_outcome,
)
from tests.sequences.test_statemachine import (
    C,
    finish_in_flight,
    killed,
    loaded,
    run,
    running,
    started,
)

STOPPED_NOTE = f"{EXIT_REASONS[Exit.STOPPED].reason}: {DRAIN_DEADLINE.format(worker='w1')}"
TIMEOUT_NOTE = f"{STOP_TIMEOUT.reason}: {DRAIN_DEADLINE.format(worker='w1')}"

# (status, exit code, reason) as the hub records them -> (outcome, ended by). The reasons are
# the ones the worker writes (core.protocol), so this is what a real row holds.
CASES = [
    ("completed", 0, EXIT_REASONS[Exit.COMPLETED].reason, Ending.COMPLETED, EndedBy.SEQUENCE),
    ("completed", 138, EXIT_REASONS[Exit.STOPPED].reason, Ending.STOPPED, EndedBy.USER),
    ("completed", 137, STOP_TIMEOUT.reason, Ending.STOPPED, EndedBy.TIMEOUT),
    ("completed", 137, EXIT_REASONS[Exit.KILLED].reason, Ending.KILLED, EndedBy.USER),
    ("completed", 137, WORKER_SHUTDOWN.reason, Ending.KILLED, EndedBy.SHUTDOWN),
    ("completed", 138, STOPPED_NOTE, Ending.STOPPED, EndedBy.DRAIN),
    ("completed", 137, TIMEOUT_NOTE, Ending.STOPPED, EndedBy.DRAIN),
    (
        "completed",
        137,
        f"{EXIT_REASONS[Exit.KILLED].reason}: {DRAIN_DEADLINE.format(worker='w1')}",
        Ending.KILLED,
        EndedBy.DRAIN,
    ),
    ("errored", 23, EXIT_REASONS[Exit.FAILED_WHILE_RUNNING].reason, Ending.FAILED, "sequence"),
    ("errored", 22, EXIT_REASONS[Exit.FAILED_ON_START].reason, Ending.FAILED, "sequence"),
    ("errored", 21, EXIT_REASONS[Exit.BAD_MAIN].reason, Ending.FAILED, "sequence"),
    ("errored", 20, "no worker answered the start request", Ending.FAILED, EndedBy.HUB),
    ("errored", UNKNOWN_EXIT, "Runner failed with exit code -1", Ending.FAILED, EndedBy.HUB),
    ("errored", 137 + 2, outcome(139, False, False).reason, Ending.FAILED, EndedBy.SIGNAL),
    # SIGKILL that no request, shutdown or drain sent: the OOM killer, or the code itself.
    ("errored", 137, outcome(137, False, False).reason, Ending.FAILED, EndedBy.SIGNAL),
    ("errored", 24, "every worker is full: not started", Ending.REFUSED, EndedBy.HUB),
    ("lost", None, WORKER_LOST.format(worker="w1"), Ending.LOST, EndedBy.WORKER_LOST),
    # Rows written before exit codes and reasons were all recorded.
    ("completed", None, "", Ending.COMPLETED, EndedBy.SEQUENCE),
    ("errored", None, "", Ending.FAILED, EndedBy.HUB),
    ("lost", None, "", Ending.LOST, EndedBy.WORKER_LOST),
]
IDS = [f"{status}-{code}-{want}-{by}" for status, code, _, want, by in CASES]


@pytest.mark.parametrize(("status", "code", "reason", "want", "by"), CASES, ids=IDS)
def test_the_rule_names_every_ending(status, code, reason, want, by) -> None:
    assert ending(status, code, reason) == (want, by)


@pytest.mark.parametrize("status", ["initializing", "starting", "running", "stopping", "killing"])
def test_a_live_instance_has_no_outcome(status) -> None:
    assert ending(status, None, "") is None


def test_every_outcome_the_worker_can_write_is_named() -> None:
    # Each exit code through the worker's own rule (runner/outcomes.py) lands on an outcome.
    for code in [*Exit, 139, 143, 1, 255, UNKNOWN_EXIT]:
        for killed_, stopped in [(False, False), (True, False), (False, True), (True, True)]:
            failed, reason = outcome(int(code), killed_, stopped)
            found = ending("errored" if failed else "completed", int(code), reason)
            assert found is not None and found[0] in Ending.ALL, (code, reason)


@pytest.mark.django_db
def test_the_database_filter_agrees_with_the_rule() -> None:
    rows = [
        Instance.objects.create(status=status, exit_code=code, reason=reason)
        for status, code, reason, _, _ in CASES
    ]
    rows.append(Instance.objects.create(status="running"))
    for name in Ending.ALL:
        found = set(Instance.objects.filter(outcomes.outcome_q(name)).values_list("pk", flat=True))
        want = {row.pk for row in rows if row.outcome == name}
        assert found == want, name
    with pytest.raises(ValueError, match="outcome: 'nope' is not one of completed"):
        outcomes.outcome_q("nope")


def test_the_user_who_asked_is_named_only_where_their_request_ended_it() -> None:
    def ended(status: str, code: int | None, reason: str) -> outcomes.Ended:
        row = Instance(status=status, exit_code=code, reason=reason, ended_by="alice")
        found = outcomes.ended(row)
        assert found is not None
        return found

    killed_ = ended("completed", 137, EXIT_REASONS[Exit.KILLED].reason)
    assert (killed_.user, killed_.text) == ("alice", "killed at alice's request")
    stopped = ended("completed", 138, EXIT_REASONS[Exit.STOPPED].reason)
    assert stopped.text == "stopped at alice's request: its stop handlers ran"
    late = ended("completed", 137, STOP_TIMEOUT.reason)
    assert late.text == "stopped at alice's request: killed when the stop timeout passed"
    # She asked, but the instance finished on its own (or its worker went) first.
    assert ended("completed", 0, "Instance completed").user is None
    assert ended("completed", 137, WORKER_SHUTDOWN.reason).text == "its worker shut down"
    json = outcomes.outcome_json(Instance(status="lost", worker="w9", reason="gone"))
    assert json == {
        "outcome": "lost",
        "endedBy": {"kind": "workerLost", "user": None, "text": "its worker w9 was lost"},
    }
    assert outcomes.outcome_json(Instance(status="running")) == {}


# -- sequencer runs --------------------------------------------------------------------------


def advance(snapshot: Snapshot, ok: bool = True, message: str = "") -> Snapshot:
    """Finish the step in flight, then let the engine pull the next one (if it may)."""
    snapshot = finish_in_flight(snapshot, ok, message)
    pulled = next_step(snapshot)
    return snapshot if pulled is None else pulled[0]


def label(snapshot: Snapshot) -> str | None:
    found = run_outcome(snapshot)
    return None if found is None else found.label


def test_a_run_that_finished_is_completed() -> None:
    done = advance(advance(running("a", "b")))
    assert done.run_result == Completed(done.run_id or "")
    assert label(done) == "Completed"


def test_a_run_that_failed_says_at_which_step() -> None:
    failed = advance(advance(running("a", "b", "c")), ok=False, message="motor stalled")
    assert isinstance(failed.run_result, Error)
    found = run_outcome(failed)
    assert found is not None and (found.outcome, found.label, found.step) == (
        "failed",
        "Failed at step 2",
        2,
    )


@pytest.mark.parametrize(
    ("command", "word"), [(C.ABORT_SEQUENCE, "Aborted"), (C.STOP, "Stopped")], ids=str
)
def test_an_aborted_or_stopped_run_is_not_labelled_completed(command, word) -> None:
    # ESW answers Completed to queryFinal (kept on the wire); people see what happened.
    cut = finish_in_flight(run(running("a", "b", "c"), command).snapshot)
    assert cut.run_result == Completed(cut.run_id or "")
    assert label(cut) == word
    # Straight away, before any step started, too.
    assert label(run(started("a"), command).snapshot) == word
    # And a new run starts with a clean slate.
    again = run(cut, C.SUBMIT, commands=[{"type": "Setup", "command": "x", "params": {}}])
    assert label(again.snapshot) == "Running"


def test_a_paused_run_says_before_which_step() -> None:
    paused = finish_in_flight(run(running("a", "b", "c"), C.PAUSE).snapshot)
    assert paused.state is State.RUNNING
    found = run_outcome(paused)
    assert found is not None and (found.outcome, found.label, found.step) == (
        "paused",
        "Paused before step 2",
        2,
    )
    # While a step is in flight it runs, breakpoint or not.
    assert label(run(running("a", "b"), C.PAUSE).snapshot) == "Running"


def test_a_run_cut_short_by_a_shutdown_is_killed_and_no_run_has_no_label() -> None:
    shut = run(running("a", "b"), C.SHUTDOWN).snapshot
    assert label(shut) == "Killed"
    assert label(loaded()) is None
    assert label(killed()) is None


def test_the_run_end_survives_a_round_trip() -> None:
    cut = finish_in_flight(run(running("a", "b"), C.ABORT_SEQUENCE).snapshot)
    assert Snapshot.from_json(cut.to_json()) == cut
