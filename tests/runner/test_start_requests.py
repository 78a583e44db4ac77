"""The worker's check of a start request (runner/supervisor.check_start): the second lock after
the MAC, field by field, for instances and sequencer scripts alike."""

from __future__ import annotations

from typing import Any

import pytest

from runner.supervisor import check_start

TOKEN = "0123456789abcdef0123456789abcdef"


def request(**fields: Any) -> dict[str, Any]:
    return {
        "id": "inst-1",
        "reply": TOKEN,
        "kind": "sequence",
        "sequence": {"sha256": "a" * 64, "main": "main.py", "language": "python"},
        **fields,
    }


def test_an_instance_start_and_a_script_start_pass() -> None:
    assert check_start(request()) == ("inst-1", TOKEN)
    script = request(kind="script", sequencer={"id": "seq-1", "prefix": "ESW.night"})
    assert check_start(script) == ("inst-1", TOKEN)


@pytest.mark.parametrize(
    ("sequencer", "needle"),
    [
        (None, "names no sequencer"),
        ({"prefix": "ESW.night"}, "sequencer.id"),
        ({"id": "../x", "prefix": "ESW.night"}, "sequencer.id"),
        ({"id": "seq-1"}, "sequencer.prefix"),
        ({"id": "seq-1", "prefix": "nodot"}, "sequencer.prefix"),
        ({"id": "seq-1", "prefix": "ESW.night\n"}, "sequencer.prefix"),
        ({"id": "seq-1", "prefix": "ESW." + "x" * 200}, "sequencer.prefix"),
    ],
)
def test_a_script_start_must_name_its_sequencer(sequencer: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        check_start(request(kind="script", sequencer=sequencer))


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        check_start(request(kind="daemon"))
