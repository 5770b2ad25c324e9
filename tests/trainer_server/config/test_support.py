"""What Tandem can train: valid ML-Agents features load, then the support check refuses those not supported yet."""

from __future__ import annotations

from pathlib import Path

import pytest
from config_helpers import REPO_ROOT, SHARED_CONFIGS, load_text, needs_shared

from trainer_server.config.loading import load_run_options, trainer_settings_from_dict
from trainer_server.config.schema import ConfigError, NotSupportedError
from trainer_server.config.support import check_behavior_supported, check_supported


@needs_shared
def test_every_shared_mlagents_config_is_supported_for_training() -> None:
    paths = sorted(SHARED_CONFIGS.rglob("*.yaml"))
    assert len(paths) >= 30
    for path in paths:
        check_supported(load_run_options(path))  # raises NotSupportedError naming the file and key


@needs_shared
@pytest.mark.parametrize(
    "relative", ["ppo/3DBall.yaml", "ppo/GridWorld.yaml", "ppo/Sorter_curriculum.yaml", "ppo/Hallway.yaml", "imitation/Hallway.yaml"]
)
def test_plain_ppo_example_configs_are_supported(relative: str) -> None:
    check_supported(load_run_options(SHARED_CONFIGS / relative))


@needs_shared
@pytest.mark.parametrize("relative", ["poca/PushBlockCollab.yaml", "poca/DungeonEscape.yaml", "poca/SoccerTwos.yaml"])
def test_poca_example_configs_are_supported(relative: str) -> None:
    check_supported(load_run_options(SHARED_CONFIGS / relative))


@pytest.mark.parametrize("trainer", ["ppo", "sac"])
@pytest.mark.parametrize("encoder", ["simple", "nature_cnn", "resnet", "match3", "fully_connected"])
def test_every_mlagents_visual_encoder_is_supported(tmp_path: Path, trainer: str, encoder: str) -> None:
    options = load_text(
        tmp_path, f"behaviors:\n  Team:\n    trainer_type: {trainer}\n    network_settings:\n      vis_encode_type: {encoder}\n"
    )
    check_supported(options)


@pytest.mark.parametrize(
    "name",
    [
        "ppo/3DBall.yaml", "ppo/GridWorld.yaml", "ppo/MultiBehavior.yaml", "ppo/Hallway.yaml", "ppo/Hallway_no_memory.yaml",
        "sac/Hallway.yaml", "sac/Hallway_no_memory.yaml", "selfplay/Pong.yaml", "selfplay/StrikerVsGoalie.yaml",
    ],
)
def test_tandem_configs_load_and_are_supported(name: str) -> None:
    options = load_run_options(REPO_ROOT / "configs" / name)
    check_supported(options)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        (
            "trainer_type: poca\n    reward_signals:\n      curiosity: {}",
            "behaviors.Team.reward_signals.curiosity: the curiosity reward signal is not supported yet with poca",
        ),
        (
            "trainer_type: poca\n    behavioral_cloning:\n      demo_path: a.demo",
            "behaviors.Team.behavioral_cloning: behavioral_cloning is not supported yet with poca",
        ),
        (
            "trainer_type: poca\n    network_settings:\n      memory: {}",
            "behaviors.Team.network_settings.memory: recurrent networks (memory) are not supported yet with poca",
        ),
    ],
)
def test_valid_but_unsupported_features_load_then_fail_the_support_check(
    tmp_path: Path, section: str, fragment: str
) -> None:
    options = load_text(tmp_path, "behaviors:\n  Team:\n    " + section + "\n")
    with pytest.raises(NotSupportedError) as info:
        check_supported(options)
    assert str(tmp_path / "trainer.yaml") in str(info.value)
    assert fragment in str(info.value)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("trainer", ["ppo", "sac", "poca"])
def test_self_play_is_supported_with_ppo_sac_and_poca(tmp_path: Path, trainer: str) -> None:
    options = load_text(
        tmp_path, f"behaviors:\n  Team:\n    trainer_type: {trainer}\n    self_play:\n      save_steps: 500\n"
    )
    check_supported(options)
    assert options.behaviors["Team"].self_play.team_change == 2500  # ML-Agents' default: 5 x save_steps
@pytest.mark.parametrize(
    "section",
    [
        "network_settings:\n      memory: {}\n    reward_signals:\n      rnd: {}\n      curiosity: {}",
        "network_settings:\n      memory: {}\n    behavioral_cloning:\n      demo_path: a.demo",
    ],
)
def test_ppo_memory_with_learned_reward_signals_and_behavioral_cloning_is_supported(tmp_path: Path, section: str) -> None:
    check_supported(load_text(tmp_path, "behaviors:\n  Team:\n    " + section + "\n"))


@pytest.mark.parametrize("signals", ["", "\n    reward_signals:\n      curiosity: {}"])
def test_sac_memory_is_supported(tmp_path: Path, signals: str) -> None:
    check_supported(load_text(tmp_path, "behaviors:\n  Team:\n    trainer_type: sac\n    network_settings:\n      memory: {}" + signals + "\n"))


def test_goal_conditioning_and_extrinsic_ppo_are_supported(tmp_path: Path) -> None:
    check_supported(
        load_text(tmp_path, "behaviors:\n  A:\n    network_settings:\n      goal_conditioning_type: none\n")
    )


def test_shared_critic_and_sac_are_supported(tmp_path: Path) -> None:
    check_supported(load_text(tmp_path, "behaviors:\n  A:\n    hyperparameters:\n      shared_critic: true\n"))
    check_supported(load_text(tmp_path, "behaviors:\n  A:\n    trainer_type: sac\n"))


def test_support_check_covers_default_settings_and_runtime_behaviors(tmp_path: Path) -> None:
    options = load_text(tmp_path, "default_settings:\n  trainer_type: poca\n  reward_signals:\n    rnd: {}\n")
    with pytest.raises(NotSupportedError, match="default_settings.reward_signals.rnd: the rnd reward signal is not supported yet with poca"):
        check_supported(options)
    with pytest.raises(NotSupportedError, match=r"behaviors\.Soccer\.reward_signals\.rnd: "):
        check_behavior_supported("Soccer?team=1", options.behavior_settings("Soccer?team=1"))
    check_behavior_supported("Ball", trainer_settings_from_dict({}))
    with pytest.raises(NotSupportedError, match="sac is not supported yet"):
        check_supported(load_text(tmp_path, "behaviors:\n  A:\n    trainer_type: sac\n"), trainer_types={"ppo"})
