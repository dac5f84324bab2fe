import pytest

from layershift_core.errors import InvalidLayerSpec
from layershift_core.spec import SpecDefaults, parse_layer_spec, strategy_steps

DEFAULTS = SpecDefaults(strategy="Canary10Percent5Minutes", poll_seconds=30)


def test_missing_spec_takes_every_default() -> None:
    spec = parse_layer_spec(None, DEFAULTS)
    assert spec.runtimes == [] and spec.architectures == []  # those of the layer's functions
    assert spec.alias == "live"
    assert [(s.weight, s.bake_seconds) for s in spec.steps] == [(10, 300)]
    assert not spec.allow_ranges


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("AllAtOnce", []),
        ("Canary10Percent5Minutes", [(10, 300)]),
        ("Canary25Percent30Minutes", [(25, 1800)]),
        ("Linear10PercentEvery1Minute", [(w, 60) for w in range(10, 100, 10)]),
        ("Linear25PercentEvery10Minutes", [(25, 600), (50, 600), (75, 600)]),
    ],
)
def test_codedeploy_strategy_names(strategy: str, expected: list[tuple[int, int]]) -> None:
    assert [(s.weight, s.bake_seconds) for s in strategy_steps(strategy)] == expected


def test_explicit_steps() -> None:
    spec = parse_layer_spec(
        b'[rollout]\nsteps = [{weight = 5, bake_seconds = 10}, {weight = 50, bake_seconds = 0}]\nalarms = ["a"]\n',
        DEFAULTS,
    )
    assert [(s.weight, s.bake_seconds) for s in spec.steps] == [(5, 10), (50, 0)]
    assert spec.strategy == "Custom"
    assert spec.alarms == ["a"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[rollout]\nstrategy = 'Canary200Percent5Minutes'\n", "rollout.strategy"),
        ("[rollout]\nstrategy = 'Fast'\n", "'Fast' is not a strategy"),
        ("[rollout]\nsteps = [{weight = 150, bake_seconds = 10}]\n", "rollout.steps[0].weight"),
        ("[rollout]\nsteps = [{weight = 10, bake_seconds = -1}]\n", "rollout.steps[0].bake_seconds"),
        ("[rollout]\nsteps = [{weight = 50, bake_seconds = 1}, {weight = 10, bake_seconds = 1}]\n", "must rise"),
        ("[rollout]\nsteps = [{weight = 10}]\nstrategy = 'AllAtOnce'\n", "exclusive"),
        ("[rollout]\npoll_seconds = 0\n", "rollout.poll_seconds"),
        ("[rollout]\nalarms = 'one'\n", "rollout.alarms"),
        ("[build]\nruntimes = ['python2.7']\n", "build.runtimes"),
        ("[build]\narchitectures = ['sparc']\n", "build.architectures"),
        ("[build]\nprofile = 'tiny'\n", "build.profile"),
        ("[targets]\nalias = '../x'\n", "targets.alias"),
        ("[targets]\nalias = '42'\n", "targets.alias"),
        ("[surprise]\nx = 1\n", "surprise"),
        ("[build]\nunknown = 1\n", "build.unknown"),
        ("not toml at all = = =", "not valid TOML"),
        ("[rollout]\nfinal_bake_seconds = -5\n", "rollout.final_bake_seconds"),
        ("[rollout]\napproval = 'yes please'\n", "rollout.approval"),
        ("[rollout]\napproval_timeout_seconds = 5\n", "rollout.approval_timeout_seconds"),
        ("[rollout]\npilots = 'orders'\n", "rollout.pilots"),
        ("[analysis]\nmax_error_rate_delta = 1.5\n", "analysis.max_error_rate_delta"),
        ("[analysis]\nmax_p99_duration_ratio = 0.5\n", "analysis.max_p99_duration_ratio"),
        ("[analysis]\nmin_invocations = 0\n", "analysis.min_invocations"),
        ("[analysis]\ninconclusive = 'shrug'\n", "analysis.inconclusive"),
        ("[analysis]\nthreshold = 1\n", "analysis.threshold"),
    ],
)
def test_bad_spec_names_the_field(text: str, fragment: str) -> None:
    with pytest.raises(InvalidLayerSpec) as caught:
        parse_layer_spec(text.encode(), DEFAULTS)
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("layer.toml")


def test_binary_garbage_is_refused() -> None:
    with pytest.raises(InvalidLayerSpec, match="UTF-8"):
        parse_layer_spec(b"\xff\xfe[rollout]", DEFAULTS)
    with pytest.raises(InvalidLayerSpec, match="NUL"):
        parse_layer_spec(b"[rollout]\x00", DEFAULTS)


def test_a_build_profile_is_opt_in() -> None:
    assert parse_layer_spec(None, DEFAULTS).profile == "default"
    assert parse_layer_spec(b"[build]\nprofile = 'sourceless'\n", DEFAULTS).profile == "sourceless"


def test_the_spec_offers_exactly_the_builder_profiles() -> None:
    import typing

    from layershift_core.builder import PROFILES
    from layershift_core.models import LayerSpec

    assert set(typing.get_args(LayerSpec.model_fields["profile"].annotation)) == set(PROFILES)


def test_progressive_delivery_keys_and_their_defaults() -> None:
    spec = parse_layer_spec(None, DEFAULTS)
    assert (spec.final_bake_seconds, spec.approval, spec.pilots) == (0, False, [])
    assert spec.analysis.enabled and spec.analysis.inconclusive == "rollback"
    text = (
        "[rollout]\nfinal_bake_seconds = 900\npilots = ['orders']\napproval = true\n"
        "[analysis]\nmin_invocations = 200\ninconclusive = 'promote'\n"
    )
    spec = parse_layer_spec(text.encode(), DEFAULTS)
    assert (spec.final_bake_seconds, spec.approval, spec.pilots) == (900, True, ["orders"])
    assert (spec.analysis.min_invocations, spec.analysis.inconclusive) == (200, "promote")
    assert spec.analysis.max_error_rate_delta == DEFAULTS.analysis.max_error_rate_delta  # the rest from the template
