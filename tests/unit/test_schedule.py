"""The traffic schedule: pilots first, then the rest; a final 100% step for a final bake or an approval."""

from layershift_core.models import Wave
from layershift_core.schedule import shift_schedule
from layershift_core.spec import SpecDefaults, parse_layer_spec

DEFAULTS = SpecDefaults()


def _schedule(toml: str, waves: list[Wave]) -> list[tuple[str, int, int, bool]]:
    spec = parse_layer_spec(toml.encode(), DEFAULTS)
    return [(s.wave.value, s.weight, s.bake_seconds, s.approval) for s in shift_schedule(spec, waves)]


STEPS = "[rollout]\nsteps = [{weight = 10, bake_seconds = 60}, {weight = 50, bake_seconds = 60}]\n"


def test_one_wave_runs_the_steps_and_promotion_takes_it_to_100() -> None:
    assert _schedule(STEPS, [Wave.MAIN]) == [("main", 10, 60, False), ("main", 50, 60, False)]


def test_pilots_go_through_every_step_before_the_rest() -> None:
    assert _schedule(STEPS, [Wave.PILOT, Wave.MAIN]) == [
        ("pilot", 10, 60, False),
        ("pilot", 50, 60, False),
        ("main", 10, 60, False),
        ("main", 50, 60, False),
    ]


def test_a_final_bake_and_an_approval_add_a_last_100_percent_step() -> None:
    toml = STEPS + "final_bake_seconds = 300\napproval = true\n"
    assert _schedule(toml, [Wave.MAIN])[-1] == ("main", 100, 300, True)
    assert _schedule(STEPS + "approval = true\n", [Wave.MAIN])[-1] == ("main", 100, 0, True)


def test_all_at_once_still_gives_pilots_a_step_of_their_own() -> None:
    toml = "[rollout]\nstrategy = 'AllAtOnce'\nfinal_bake_seconds = 120\n"
    assert _schedule(toml, [Wave.PILOT, Wave.MAIN]) == [("pilot", 100, 120, False), ("main", 100, 120, False)]
    assert _schedule("[rollout]\nstrategy = 'AllAtOnce'\n", [Wave.MAIN]) == []


def test_no_targets_no_steps() -> None:
    assert _schedule(STEPS + "approval = true\n", []) == []
