"""What happens to sequencers whose process was lost with its worker."""

from collections.abc import Iterable

from sequences import sequencer_store as store
from sequences.models import Sequencer


def on_instances_lost(instance_ids: Iterable[str], reason: str) -> list[str]:
    """Mark Killed (with the reason, a transition row and a change notice) every sequencer
    that ran in one of these instances; its component goes Idle with the reason
    (`sequencer_store.apply`). The prefixes of those it marked."""
    rows = list(
        Sequencer.objects.filter(instance_id__in=list(instance_ids))
        .exclude(state="Killed")
        .values_list("id", "prefix")
    )
    for sequencer_id, _prefix in rows:
        store.mark_killed(sequencer_id, f"process lost: {reason}", "processLost")
    return [prefix for _id, prefix in rows]
