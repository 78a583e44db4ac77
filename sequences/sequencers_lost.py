"""What happens to sequencers whose process was lost with its worker."""

from collections.abc import Iterable


def on_instances_lost(instance_ids: Iterable[str], reason: str) -> None:
    from django.utils import timezone

    from sequences.models import Sequencer

    Sequencer.objects.filter(instance_id__in=list(instance_ids)).exclude(state="Killed").update(
        state="Killed", processing="", reason=f"process lost: {reason}"[:500], ended=timezone.now()
    )
