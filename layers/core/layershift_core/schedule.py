"""The traffic schedule: which wave gets which weight, in what order, for how long.

The ShiftTraffic Map runs these steps one at a time. For a step of wave W at weight w:
- the targets of earlier waves are 100% on their new version;
- the targets of wave W keep the old version as primary and route w% to the new one (at 100%,
  the alias points at the new version with no routing);
- the targets of later waves are not touched.

Pilots go through the strategy's steps first, then the rest. A final 100% step is added when the
spec asks for a final bake or an approval (which comes before it).
"""

from __future__ import annotations

from .models import LayerSpec, ShiftStep, Wave

FULL = 100


def shift_schedule(spec: LayerSpec, waves: list[Wave]) -> list[ShiftStep]:
    """The ShiftTraffic items for the waves that have targets, in order (pilot before main)."""
    ordered = [wave for wave in (Wave.PILOT, Wave.MAIN) if wave in waves]
    schedule: list[ShiftStep] = []
    for index, wave in enumerate(ordered):
        steps = [ShiftStep(wave=wave, weight=s.weight, bake_seconds=s.bake_seconds) for s in spec.steps]
        more_waves = index < len(ordered) - 1
        if not steps and more_waves:
            # AllAtOnce with a later wave: the pilots still get a step of their own, at 100%.
            steps = [ShiftStep(wave=wave, weight=FULL, bake_seconds=spec.final_bake_seconds)]
        schedule += steps
    if ordered and (spec.final_bake_seconds > 0 or spec.approval):
        schedule.append(
            ShiftStep(wave=ordered[-1], weight=FULL, bake_seconds=spec.final_bake_seconds, approval=spec.approval)
        )
    return schedule
