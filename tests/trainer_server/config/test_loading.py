"""ML-Agents trainer YAML and command line -> RunOptions: real files, ML-Agents' defaults and rules, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from config_helpers import REPO_ROOT, SHARED_CONFIGS, SHARED_FILES, cli, config_error, load_text, needs_shared, write

from trainer_server.config.loading import load_run_options, trainer_settings_from_dict
from trainer_server.config.schema import (
    ConfigError,
    ConstantSettings,
    CuriositySettings,
    GAILSettings,
    GaussianSettings,
    MultiRangeUniformSettings,
    PPOSettings,
    RewardSignalSettings,
    RunOptions,
    SACSettings,
    UniformSettings,
)


@needs_shared
@pytest.mark.parametrize("path", SHARED_FILES, ids=[str(p.relative_to(SHARED_CONFIGS)) for p in SHARED_FILES])
def test_every_mlagents_example_config_loads_and_round_trips(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    options = load_run_options(path)
    assert set(options.behaviors) == set(raw["behaviors"])
    for name, section in raw["behaviors"].items():
        settings = options.behavior_settings(f"{name}?team=0")
        assert settings.trainer_type == section["trainer_type"]
        assert settings.max_steps == int(float(section["max_steps"]))
        for key, value in section["hyperparameters"].items():
            assert getattr(settings.hyperparameters, key) == value, key
        for key, value in section["network_settings"].items():
            if key != "memory":
                assert getattr(settings.network_settings, key) == value, key
        assert set(settings.reward_signals) == set(section["reward_signals"])
    # configuration.yaml (as_dict) loads back to the same options
    again = RunOptions.from_dict(yaml.safe_load(options.to_yaml()), "configuration.yaml")
    assert again == options


@needs_shared
def test_shared_configs_cover_every_folder() -> None:
    folders = {p.parent.name for p in SHARED_FILES}
    assert {"ppo", "sac", "poca", "imitation"} <= folders


def test_tandem_default_config_matches_the_mlagents_3dball_hyperparameters() -> None:
    settings = load_run_options(REPO_ROOT / "configs" / "ppo" / "3DBall.yaml").behavior_settings("3DBall?team=0")
    assert settings.hyperparameters == PPOSettings(
        batch_size=64,
        buffer_size=12000,
        learning_rate=3.0e-4,
        beta=1.0e-3,
        epsilon=0.2,
        lambd=0.99,
        num_epoch=3,
        learning_rate_schedule="linear",
    )
    assert settings.network_settings.normalize is True
    assert (settings.network_settings.hidden_units, settings.network_settings.num_layers) == (128, 2)
    assert settings.time_horizon == 1000
    assert settings.reward_signals["extrinsic"].gamma == 0.99


def test_multi_behavior_config_inherits_from_default_settings() -> None:
    options = load_run_options(REPO_ROOT / "configs" / "ppo" / "MultiBehavior.yaml")
    chaser, runner = options.behavior_settings("Chaser?team=0"), options.behavior_settings("Runner?team=0")
    assert chaser == options.default_settings
    assert (runner.hyperparameters.batch_size, runner.hyperparameters.buffer_size) == (128, 2048)
    assert runner.hyperparameters.beta == 0.01 and chaser.hyperparameters.beta == 0.005
    assert runner.hyperparameters.learning_rate_schedule == "linear" and runner.time_horizon == 128


def test_empty_behavior_section_gets_mlagents_ppo_defaults(tmp_path: Path) -> None:
    settings = load_text(tmp_path, "behaviors:\n  3DBall:\n").behavior_settings("3DBall")
    assert settings.trainer_type == "ppo"
    hp = settings.hyperparameters
    assert isinstance(hp, PPOSettings)
    assert (hp.batch_size, hp.buffer_size, hp.learning_rate) == (1024, 10240, 3.0e-4)
    assert (hp.beta, hp.epsilon, hp.lambd, hp.num_epoch, hp.shared_critic) == (5.0e-3, 0.2, 0.95, 3, False)
    assert (hp.learning_rate_schedule, hp.beta_schedule, hp.epsilon_schedule) == ("linear", "linear", "linear")
    ns = settings.network_settings
    assert (ns.normalize, ns.hidden_units, ns.num_layers, ns.vis_encode_type) == (False, 128, 2, "simple")
    assert (ns.memory, ns.goal_conditioning_type, ns.deterministic) == (None, "hyper", False)
    assert list(settings.reward_signals) == ["extrinsic"]
    extrinsic = settings.reward_signals["extrinsic"]
    assert type(extrinsic) is RewardSignalSettings
    assert (extrinsic.gamma, extrinsic.strength) == (0.99, 1.0)
    assert (settings.time_horizon, settings.max_steps, settings.summary_freq) == (64, 500000, 50000)
    assert (settings.checkpoint_interval, settings.keep_checkpoints, settings.even_checkpoints) == (500000, 5, False)
    assert (settings.init_path, settings.threaded, settings.self_play, settings.behavioral_cloning) == (
        None,
        False,
        None,
        None,
    )


def test_sac_defaults_and_reward_signal_steps_follow_steps_per_update(tmp_path: Path) -> None:
    options = load_text(
        tmp_path,
        "behaviors:\n  A:\n    trainer_type: sac\n  B:\n    trainer_type: sac\n"
        "    hyperparameters:\n      steps_per_update: 10\n",
    )
    hp = options.behaviors["A"].hyperparameters
    assert isinstance(hp, SACSettings)
    assert (hp.batch_size, hp.buffer_size, hp.learning_rate, hp.learning_rate_schedule) == (
        128,
        50000,
        3e-4,
        "constant",
    )
    assert (hp.buffer_init_steps, hp.tau, hp.steps_per_update, hp.init_entcoef) == (0, 0.005, 1.0, 1.0)
    assert (hp.save_replay_buffer, hp.reward_signal_steps_per_update) == (False, 1.0)
    assert options.behaviors["B"].hyperparameters.reward_signal_steps_per_update == 10.0


def test_beta_and_epsilon_schedules_follow_the_learning_rate_schedule_unless_given(tmp_path: Path) -> None:
    options = load_text(
        tmp_path,
        "behaviors:\n"
        "  A:\n    trainer_type: ppo\n    hyperparameters:\n      learning_rate_schedule: constant\n"
        "  B:\n    trainer_type: ppo\n    hyperparameters:\n      learning_rate_schedule: constant\n"
        "      epsilon_schedule: linear\n",
    )
    a, b = options.behaviors["A"].hyperparameters, options.behaviors["B"].hyperparameters
    assert (a.beta_schedule, a.epsilon_schedule) == ("constant", "constant")
    assert (b.beta_schedule, b.epsilon_schedule) == ("constant", "linear")


def test_reward_signal_defaults_and_deprecated_encoding_size(tmp_path: Path) -> None:
    options = load_text(
        tmp_path,
        "behaviors:\n  P:\n    reward_signals:\n      curiosity:\n        encoding_size: 64\n"
        "      gail:\n        demo_path: expert.demo\n",
    )
    signals = options.behaviors["P"].reward_signals
    assert list(signals) == ["curiosity", "gail"]  # listing signals replaces the default extrinsic one
    curiosity, gail = signals["curiosity"], signals["gail"]
    assert isinstance(curiosity, CuriositySettings) and isinstance(gail, GAILSettings)
    assert (curiosity.learning_rate, curiosity.network_settings.hidden_units) == (3e-4, 64)
    assert (gail.demo_path, gail.use_actions, gail.use_vail, gail.gamma) == ("expert.demo", False, False, 0.99)


def test_run_level_sections_default_to_mlagents_learn_defaults(tmp_path: Path) -> None:
    options = load_text(tmp_path, "behaviors: {}\n")
    env, engine, cs = options.env_settings, options.engine_settings, options.checkpoint_settings
    assert (env.env_path, env.env_args, env.base_port, env.num_envs, env.num_areas) == (None, None, 5005, 1, 1)
    assert (env.seed, env.timeout_wait, env.max_lifetime_restarts) == (-1, 60, 10)
    assert (env.restarts_rate_limit_n, env.restarts_rate_limit_period_s) == (1, 60)
    assert (engine.width, engine.height, engine.quality_level, engine.time_scale) == (84, 84, 5, 20.0)
    assert (engine.target_frame_rate, engine.capture_frame_rate, engine.no_graphics) == (-1, 60, False)
    assert (cs.run_id, cs.initialize_from, cs.resume, cs.force, cs.inference, cs.results_dir) == (
        "ppo",
        None,
        False,
        False,
        False,
        "results",
    )
    assert cs.write_path == Path("results/ppo") and cs.run_logs_dir == Path("results/ppo/run_logs")
    assert (options.torch_settings.device, options.debug, options.environment_parameters) == (None, False, None)


def test_default_settings_inheritance(tmp_path: Path) -> None:
    options = load_text(
        tmp_path,
        """
default_settings:
  trainer_type: ppo
  hyperparameters:
    batch_size: 256
    learning_rate: 1.0e-4
  network_settings:
    hidden_units: 64
  max_steps: 1000
behaviors:
  Listed:
    hyperparameters:
      batch_size: 32
    reward_signals:
      curiosity:
        strength: 0.02
  Sac:
    trainer_type: sac
    hyperparameters:
      tau: 0.01
""",
    )
    listed = options.behavior_settings("Listed?team=0")
    assert listed.hyperparameters.batch_size == 32  # its own value
    assert listed.hyperparameters.learning_rate == 1.0e-4  # from default_settings
    assert listed.network_settings.hidden_units == 64  # from default_settings
    assert listed.network_settings.num_layers == 2  # ML-Agents' default
    assert listed.max_steps == 1000
    # ML-Agents merges sections: the default's extrinsic signal stays next to curiosity
    assert set(listed.reward_signals) == {"extrinsic", "curiosity"}
    unlisted = options.behavior_settings("Other?team=0")
    assert unlisted == options.default_settings
    assert unlisted.hyperparameters.batch_size == 256
    sac = options.behavior_settings("Sac")
    assert isinstance(sac.hyperparameters, SACSettings)  # another trainer: PPO hyperparameters not inherited
    assert (sac.hyperparameters.tau, sac.hyperparameters.batch_size) == (0.01, 128)
    assert sac.network_settings.hidden_units == 64 and sac.max_steps == 1000


def test_without_default_settings_unlisted_behaviors_get_mlagents_defaults(tmp_path: Path) -> None:
    options = load_text(tmp_path, "behaviors:\n  A:\n    max_steps: 10\n")
    assert options.behavior_settings("A").max_steps == 10
    other = options.behavior_settings("Unknown?team=0")
    assert other.max_steps == 500000 and other.hyperparameters == PPOSettings()
    assert load_run_options(None).behavior_settings("Anything").time_horizon == 64


def test_yaml_11_numeric_strings_are_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "behaviors:\n  A:\n    max_steps: 1.0e7\n    summary_freq: 5.0e4\n"
        "    hyperparameters:\n      buffer_size: 5.0e5\n      learning_rate: 1e-3\n      beta: 5.0e-3\n",
    )
    assert yaml.safe_load(path.read_text())["behaviors"]["A"]["max_steps"] == "1.0e7"  # what PyYAML gives
    settings = load_run_options(path).behaviors["A"]
    assert settings.max_steps == 10_000_000 and type(settings.max_steps) is int
    assert settings.summary_freq == 50_000 and type(settings.summary_freq) is int
    assert settings.hyperparameters.buffer_size == 500_000 and type(settings.hyperparameters.buffer_size) is int
    assert settings.hyperparameters.learning_rate == 1e-3
    assert settings.hyperparameters.beta == 5e-3


@pytest.mark.parametrize(
    ("snippet", "fragments"),
    [
        ("hyperparameters:\n      batch_size: 12.5", ["behaviors.A.hyperparameters.batch_size", "whole number"]),
        ("hyperparameters:\n      batch_size: lots", ["behaviors.A.hyperparameters.batch_size", "number"]),
        ("hyperparameters:\n      batch_size: -64", ["behaviors.A.hyperparameters.batch_size", "at least 1"]),
        ("hyperparameters:\n      buffer_size: 0", ["behaviors.A.hyperparameters.buffer_size", "at least 1"]),
        ("hyperparameters:\n      batch_size: true", ["batch_size", "boolean"]),
        ("hyperparameters:\n      learning_rate: -0.1", ["learning_rate", "greater than 0"]),
        ("hyperparameters:\n      learning_rate_schedule: cosine", ["learning_rate_schedule", "linear, constant"]),
        ("hyperparameters:\n      lambd: 1.5", ["hyperparameters.lambd", "at most 1"]),
        ("hyperparameters:\n      batch_size: 4096\n      buffer_size: 1024", ["batch_size", "buffer_size (1024)"]),
        ("network_settings:\n      normalize: maybe", ["network_settings.normalize", "true or false"]),
        ("network_settings:\n      vis_encode_type: vit", ["vis_encode_type", "nature_cnn"]),
        ("network_settings:\n      memory:\n        memory_size: 33", ["memory.memory_size", "even"]),
        (
            "network_settings:\n      memory:\n        sequence_length: 2048",
            ["memory.sequence_length", "batch_size (1024)"],
        ),
        ("reward_signals:\n      extrinsic:\n        gamma: 1.5", ["reward_signals.extrinsic.gamma", "at most 1"]),
        ("reward_signals:\n      bonus: {}", ["reward_signals.bonus", "unknown reward signal"]),
        ("reward_signals:\n      gail:\n        strength: 0.1", ["reward_signals.gail.demo_path", "required"]),
        ("reward_signals: {}", ["reward_signals", "at least one"]),
        ("trainer_type: a2c", ["behaviors.A.trainer_type", "unknown trainer_type", "ppo, sac, poca"]),
        ("behavioral_cloning:\n      strength: 0.5", ["behavioral_cloning.demo_path", "required"]),
        ("time_horizon: 0", ["behaviors.A.time_horizon", "at least 1"]),
        ("max_steps: -5", ["behaviors.A.max_steps", "at least 1"]),
        ("self_play: yes_please", ["behaviors.A.self_play", "mapping"]),
    ],
)
def test_wrong_types_and_values_name_the_file_and_key(tmp_path: Path, snippet: str, fragments: list[str]) -> None:
    message = config_error(tmp_path, "behaviors:\n  A:\n    " + snippet + "\n")
    assert message.startswith(str(tmp_path / "trainer.yaml") + ": ")
    for fragment in fragments:
        assert fragment in message


def test_unknown_key_names_the_key_path_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "behaviors:\n  3DBall:\n    hyperparameters:\n      batch_sise: 64\n", "x.yaml")
    with pytest.raises(ConfigError) as info:
        load_run_options(path)
    message = str(info.value)
    assert message.startswith(f"{path}: behaviors.3DBall.hyperparameters.batch_sise: unknown key")
    assert "did you mean 'batch_size'" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("behaviours:\n  A: {}\n", ": behaviours: unknown key"),
        ("behaviors:\n  A:\n    max_step: 10\n", "behaviors.A.max_step: unknown key (did you mean 'max_steps'?)"),
        (
            "behaviors:\n  A:\n    trainer_type: sac\n    hyperparameters:\n      beta: 0.1\n",
            "hyperparameters.beta: unknown key for trainer_type sac",
        ),
        ("env_settings:\n  num_env: 2\n", "env_settings.num_env: unknown key"),
        ("engine_settings:\n  time_scale: 0\n", "engine_settings.time_scale: must be greater than 0"),
        ("checkpoint_settings:\n  run-id: x\n", "checkpoint_settings.run-id: unknown key"),
        ("trainer_type: ppo\n", "trainer_type: unknown top-level key: trainer settings go under behaviors:"),
        (
            "default:\n  trainer: ppo\n  batch_size: 64\n",
            "default: unknown top-level key: this looks like a behavior section in the format used before ML-Agents Release 3",
        ),
        ("behaviors:\n  - A\n", "behaviors: must be a mapping"),
        ("- just\n- a list\n", "must hold a mapping of sections"),
    ],
)
def test_structure_errors(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in config_error(tmp_path, text)


def test_offline_bc_gets_the_removal_explanation(tmp_path: Path) -> None:
    message = config_error(tmp_path, "behaviors:\n  Expert:\n    trainer_type: offline_bc\n")
    assert "behaviors.Expert.trainer_type" in message
    assert "offline_bc was removed" in message
    assert "behavioral_cloning" in message and "ppo or sac" in message
    assert "tandem-trainer CONFIG --demos DEMO_PATH" in message


def test_missing_file_and_invalid_yaml_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_run_options(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"config path is a directory"):
        load_run_options(tmp_path)
    with pytest.raises(ConfigError, match=r"broken\.yaml: invalid YAML \(line 2, column 1\): .*'\\t'"):
        load_run_options(write(tmp_path, "behaviors:\n\tA: {}\n", "broken.yaml"))


def test_empty_file_means_all_defaults(tmp_path: Path) -> None:
    options = load_text(tmp_path, "")
    assert options.behaviors == {} and options.default_settings is None


ENV_PARAMS = """
behaviors:
  Sorter: {}
environment_parameters:
  gravity: 9.81
  big: 1.0e7
  mass:
    sampler_type: uniform
    sampler_parameters:
      min_value: 0.5
      max_value: 10
  noise:
    sampler_type: gaussian
    sampler_parameters:
      mean: 2.0
      st_dev: 0.3
      seed: 42
  gaps:
    sampler_type: multirangeuniform
    sampler_parameters:
      intervals: [[7, 10], [15, 20]]
  num_tiles:
    curriculum:
      - name: Easy
        completion_criteria:
          measure: progress
          behavior: Sorter
          signal_smoothing: true
          min_lesson_length: 100
          threshold: 0.3
        value: 2.0
      - name: Random
        completion_criteria:
          behavior: Sorter
          threshold: 0.8
          require_reset: true
        value:
          sampler_type: uniform
          sampler_parameters:
            min_value: 4
            max_value: 8
      - name: Hard
        value: 20
"""


def test_environment_parameters_samplers_and_curricula(tmp_path: Path) -> None:
    params = load_text(tmp_path, ENV_PARAMS).environment_parameters
    assert params is not None
    gravity = params["gravity"].curriculum
    assert len(gravity) == 1 and gravity[0].name == "gravity" and gravity[0].completion_criteria is None
    assert gravity[0].value == ConstantSettings(value=9.81)
    assert params["big"].curriculum[0].value == ConstantSettings(value=1.0e7)
    assert params["mass"].curriculum[0].value == UniformSettings(min_value=0.5, max_value=10.0)
    assert params["noise"].curriculum[0].value == GaussianSettings(mean=2.0, st_dev=0.3, seed=42)
    assert params["gaps"].curriculum[0].value == MultiRangeUniformSettings(intervals=((7.0, 10.0), (15.0, 20.0)))
    easy, random_lesson, hard = params["num_tiles"].curriculum
    assert (easy.name, easy.value) == ("Easy", ConstantSettings(value=2.0))
    criteria = easy.completion_criteria
    assert (criteria.measure, criteria.behavior, criteria.threshold, criteria.min_lesson_length) == (
        "progress",
        "Sorter",
        0.3,
        100,
    )
    assert criteria.signal_smoothing is True and criteria.require_reset is False
    # a sampler as a lesson's value; completion criteria defaults (measure: reward)
    assert random_lesson.value == UniformSettings(min_value=4.0, max_value=8.0)
    assert random_lesson.completion_criteria.measure == "reward"
    assert random_lesson.completion_criteria.require_reset is True
    assert hard.completion_criteria is None and hard.value == ConstantSettings(value=20.0)


def test_environment_parameters_export_like_mlagents(tmp_path: Path) -> None:
    exported = load_text(tmp_path, ENV_PARAMS).as_dict()["environment_parameters"]
    assert exported["mass"] == {
        "curriculum": [
            {
                "value": {
                    "sampler_type": "uniform",
                    "sampler_parameters": {"seed": -1, "min_value": 0.5, "max_value": 10.0},
                },
                "name": "mass",
                "completion_criteria": None,
            }
        ]
    }
    assert exported["gaps"]["curriculum"][0]["value"]["sampler_parameters"]["intervals"] == [[7.0, 10.0], [15.0, 20.0]]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "environment_parameters:\n  p:\n    sampler_type: uniform\n    sampler_parameters:\n"
            "      min_value: 5\n      max_value: 1\n",
            "environment_parameters.p.sampler_parameters: min_value (5) is greater than max_value (1)",
        ),
        (
            "environment_parameters:\n  p:\n    sampler_type: beta\n    sampler_parameters: {}\n",
            "environment_parameters.p.sampler_type: must be one of constant, uniform, gaussian, multirangeuniform",
        ),
        (
            "environment_parameters:\n  p:\n    sampler_type: uniform\n",
            "environment_parameters.p.sampler_parameters: required key is missing",
        ),
        (
            "environment_parameters:\n  p:\n    sampler_type: gaussian\n    sampler_parameters:\n      stdev: 1\n",
            "sampler_parameters.stdev: unknown key for sampler_type gaussian (did you mean 'st_dev'?)",
        ),
        (
            "environment_parameters:\n  p:\n    sampler_type: multirangeuniform\n    sampler_parameters:\n"
            "      intervals: [[1, 2, 3]]\n",
            "intervals.0: must be a [min, max] pair",
        ),
        (
            "environment_parameters:\n  p:\n    curriculum:\n      - name: A\n        value: 1\n"
            "      - name: B\n        value: 2\n",
            "environment_parameters.p.curriculum.0.completion_criteria: required: lesson 'A' of 'p' is not the last one",
        ),
        (
            "environment_parameters:\n  p:\n    curriculum:\n      - name: A\n        value: 1\n"
            "        completion_criteria:\n          behavior: B\n          measure: progress\n          threshold: 2\n"
            "      - name: B\n        value: 2\n",
            "completion_criteria.threshold: must be in [0, 1] when the measure is progress",
        ),
        (
            "environment_parameters:\n  p:\n    curriculum:\n      - name: A\n        value: 1\n"
            "        completion_criteria:\n          threshold: 2\n      - name: B\n        value: 2\n",
            "completion_criteria.behavior: required key is missing",
        ),
        (
            "environment_parameters:\n  p:\n    curriculum:\n      - value: 1\n",
            "environment_parameters.p.curriculum.0.name: required key is missing",
        ),
    ],
)
def test_environment_parameter_errors(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in config_error(tmp_path, text)


def test_command_line_overrides_the_file_only_where_given(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "behaviors:\n  A: {}\ncheckpoint_settings:\n  run_id: from-file\n  results_dir: out\n"
        "env_settings:\n  seed: 3\n  num_envs: 2\nengine_settings:\n  width: 100\n",
    )
    options = load_run_options(path, cli(run_id="from-cli", results_dir=None, seed=None, width=320, time_scale=None))
    assert options.checkpoint_settings.run_id == "from-cli"
    assert options.checkpoint_settings.results_dir == "out"
    assert (options.env_settings.seed, options.env_settings.num_envs) == (3, 2)
    assert options.engine_settings.width == 320 and options.engine_settings.time_scale == 20.0
    options = load_run_options(
        path,
        cli(
            env_path="builds/3DBall.x86_64",
            env_args=["--mode", "fast"],
            device="cuda:0",
            debug=True,
            deterministic=True,
            inference=True,
            no_graphics=True,
        ),
    )
    assert options.env_settings.env_path == "builds/3DBall.x86_64"
    assert options.env_settings.env_args == ("--mode", "fast")
    assert options.torch_settings.device == "cuda:0" and options.debug is True
    assert options.checkpoint_settings.inference and options.engine_settings.no_graphics
    assert options.behavior_settings("A").network_settings.deterministic is True
    assert options.behavior_settings("Unlisted").network_settings.deterministic is True


def test_command_line_errors_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^command line --num-areas: must be at least 1, got 0$"):
        load_run_options(None, cli(num_areas=0))


def test_resume_with_force_is_refused_and_resume_wins_over_initialize_from(tmp_path: Path) -> None:
    message = config_error(tmp_path, "checkpoint_settings:\n  resume: true\n  force: true\n")
    assert "checkpoint_settings.force: resume and force cannot both be true" in message
    with pytest.raises(ConfigError, match="--resume and --force cannot be used together"):
        load_run_options(None, cli(resume=True, force=True))
    both = load_text(tmp_path, "checkpoint_settings:\n  resume: true\n  initialize_from: old-run\n")
    assert both.checkpoint_settings.resume and both.checkpoint_settings.initialize_from is None
    from_cli = load_run_options(write(tmp_path, "checkpoint_settings:\n  resume: true\n"), cli(initialize_from="old"))
    assert not from_cli.checkpoint_settings.resume and from_cli.checkpoint_settings.initialize_from == "old"
    assert from_cli.checkpoint_settings.maybe_init_path == Path("results/old")


def test_trainer_settings_from_dict_for_tools_and_tests() -> None:
    settings = trainer_settings_from_dict({"hyperparameters": {"batch_size": 32, "buffer_size": 320}})
    assert settings.hyperparameters.batch_size == 32 and settings.hyperparameters.epsilon == 0.2
    with pytest.raises(ConfigError, match="hyperparameters.epsilon_typo: unknown key"):
        trainer_settings_from_dict({"hyperparameters": {"epsilon_typo": 1}})


SAC = "trainer_type: sac\n    "


@pytest.mark.parametrize(
    ("section", "key_path", "fragment"),
    [
        # what PPO's learner checked again: refused once, here
        ("hyperparameters:\n      batch_size: 0", "hyperparameters.batch_size", "at least 1"),
        ("hyperparameters:\n      buffer_size: 0", "hyperparameters.buffer_size", "at least 1"),
        ("hyperparameters:\n      num_epoch: 0", "hyperparameters.num_epoch", "at least 1"),
        ("hyperparameters:\n      batch_size: 128\n      buffer_size: 64", "hyperparameters.batch_size", "(64)"),
        ("hyperparameters:\n      learning_rate: 0", "hyperparameters.learning_rate", "greater than 0"),
        ("hyperparameters:\n      epsilon: 0", "hyperparameters.epsilon", "greater than 0"),
        ("hyperparameters:\n      beta: -0.01", "hyperparameters.beta", "at least 0"),
        ("hyperparameters:\n      lambd: -0.1", "hyperparameters.lambd", "at least 0"),
        ("hyperparameters:\n      lambd: 1.01", "hyperparameters.lambd", "at most 1"),
        ("hyperparameters:\n      beta_schedule: cosine", "hyperparameters.beta_schedule", "linear, constant"),
        ("hyperparameters:\n      epsilon_schedule: step", "hyperparameters.epsilon_schedule", "linear, constant"),
        ("reward_signals:\n      extrinsic:\n        gamma: -0.5", "reward_signals.extrinsic.gamma", "at least 0"),
        ("max_steps: 0", "max_steps", "at least 1"),
        ("time_horizon: 0", "time_horizon", "at least 1"),
        ("network_settings:\n      hidden_units: 0", "network_settings.hidden_units", "at least 1"),
        ("network_settings:\n      num_layers: 0", "network_settings.num_layers", "at least 1"),
        # what SAC's learner checked again
        (SAC + "hyperparameters:\n      batch_size: 0", "hyperparameters.batch_size", "at least 1"),
        (SAC + "hyperparameters:\n      buffer_size: 0", "hyperparameters.buffer_size", "at least 1"),
        (SAC + "hyperparameters:\n      batch_size: 256\n      buffer_size: 99", "hyperparameters.batch_size", "(99)"),
        (SAC + "hyperparameters:\n      learning_rate: 0", "hyperparameters.learning_rate", "greater than 0"),
        (SAC + "hyperparameters:\n      learning_rate_schedule: x", "hyperparameters.learning_rate_schedule", "linear"),
        (SAC + "hyperparameters:\n      tau: 0", "hyperparameters.tau", "greater than 0"),
        (SAC + "hyperparameters:\n      tau: 1.5", "hyperparameters.tau", "at most 1"),
        (SAC + "hyperparameters:\n      steps_per_update: 0", "hyperparameters.steps_per_update", "greater than 0"),
        (
            SAC + "hyperparameters:\n      reward_signal_steps_per_update: 0",
            "hyperparameters.reward_signal_steps_per_update",
            "greater than 0",
        ),
        (SAC + "hyperparameters:\n      init_entcoef: 0", "hyperparameters.init_entcoef", "greater than 0"),
        (SAC + "hyperparameters:\n      buffer_init_steps: -1", "hyperparameters.buffer_init_steps", "at least 0"),
        (SAC + "reward_signals:\n      extrinsic:\n        gamma: 1.0", "reward_signals.extrinsic.gamma", "below 1"),
        (SAC + "network_settings:\n      hidden_units: 0", "network_settings.hidden_units", "at least 1"),
        (SAC + "max_steps: 0", "max_steps", "at least 1"),
    ],
)
def test_every_range_a_learner_relies_on_is_refused_at_load(
    tmp_path: Path, section: str, key_path: str, fragment: str
) -> None:
    message = config_error(tmp_path, "behaviors:\n  A:\n    " + section + "\n")
    assert message.startswith(f"{tmp_path / 'trainer.yaml'}: behaviors.A.{key_path}: "), message
    assert fragment in message


def test_ranges_apply_to_default_settings_and_the_command_line_too(tmp_path: Path) -> None:
    message = config_error(tmp_path, "default_settings:\n  hyperparameters:\n    learning_rate: 0\n")
    assert "default_settings.hyperparameters.learning_rate: must be greater than 0" in message
    with pytest.raises(ConfigError, match=r"^command line --time-scale: must be greater than 0, got 0$"):
        load_run_options(None, cli(time_scale=0.0))
