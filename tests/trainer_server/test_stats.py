"""Training statistics: aggregations and the console summary line."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_server import stats as stats_mod


def test_console_summary_line():
    summaries = stats_mod.BehaviorStats()
    for r in (1.0, 2.0, 3.0):
        summaries.add(stats_mod.CUMULATIVE_REWARD, r)
    line, fields = stats_mod.console_summary("3DBall", 12000, 35.25, summaries.summarize(), True)
    assert line == "3DBall. Step: 12000. Time Elapsed: 35.250 s. Mean Reward: 2.000. Std of Reward: 0.816. Training."
    assert fields["mean_reward"] == 2.0 and fields["episodes"] == 3
    line, _ = stats_mod.console_summary("3DBall", 24000, 70.0, {}, False)
    assert line.endswith("No episode was completed since last summary. Not Training.")


def test_console_summary_shows_group_reward_instead_of_std():
    summaries = stats_mod.BehaviorStats()
    summaries.add(stats_mod.CUMULATIVE_REWARD, 1.0)
    summaries.add(stats_mod.GROUP_CUMULATIVE_REWARD, 0.5)
    line, _ = stats_mod.console_summary("Soccer", 500, 2.0, summaries.summarize(), True)
    assert line == "Soccer. Step: 500. Time Elapsed: 2.000 s. Mean Reward: 1.000. Mean Group Reward: 0.500. Training."


def test_console_lines_go_to_stdout_as_mlagents_prints_them(capsys):
    summaries = stats_mod.BehaviorStats()
    summaries.add(stats_mod.CUMULATIVE_REWARD, 1.25)
    stats_mod.log_summary("3DBall", 12000, 10.1, summaries.summarize(), True)
    stats_mod.log_exported(Path("results/r/3DBall/3DBall-12000.onnx"))
    stats_mod.log_copied(Path("results/r/3DBall/3DBall-12000.onnx"), Path("results/r/3DBall.onnx"))
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "[INFO] 3DBall. Step: 12000. Time Elapsed: 10.100 s. Mean Reward: 1.250. Std of Reward: 0.000. Training.",
        "[INFO] Exported results/r/3DBall/3DBall-12000.onnx",
        "[INFO] Copied results/r/3DBall/3DBall-12000.onnx to results/r/3DBall.onnx.",
    ]
    assert "3DBall" not in err  # not a second time among the logs


def test_hyperparameters_dump_in_mlagents_layout():
    settings = {
        "trainer_type": "ppo",
        "hyperparameters": {"batch_size": 64, "learning_rate": 0.0003, "shared_critic": False},
        "network_settings": {"memory": None, "nested": {"depth": 2}},
        "max_steps": 500000,
    }
    assert stats_mod.hyperparameters_text("3DBall", settings).split("\n") == [
        "Hyperparameters for behavior name 3DBall: ",
        "\ttrainer_type:\tppo",
        "\thyperparameters:\t",
        "\t  batch_size:\t64",
        "\t  learning_rate:\t0.0003",
        "\t  shared_critic:\tFalse",
        "\tnetwork_settings:\t",
        "\t  memory:\tNone",
        "\t  nested:\t",
        "\t    depth:\t2",
        "\tmax_steps:\t500000",
    ]


def test_stat_aggregations():
    s = stats_mod.BehaviorStats()
    for v in (1.0, 2.0, 6.0):
        s.add("avg", v, stats_mod.Aggregation.parse("average"))
        s.add("last", v, stats_mod.Aggregation.parse("MOST_RECENT"))
        s.add("sum", v, stats_mod.Aggregation.parse("2"))
    out = s.summarize()
    assert (out["avg"].value, out["last"].value, out["sum"].value) == (3.0, 6.0, 9.0)
    assert s.summarize() == {}
    with pytest.raises(ValueError, match="median"):
        stats_mod.Aggregation.parse("median")


def test_a_unity_stat_named_like_a_trainer_tag_joins_its_series_as_in_mlagents():
    s = stats_mod.BehaviorStats()
    s.add(stats_mod.EPISODE_LENGTH, 10.0)  # the trainer's
    s.add(stats_mod.EPISODE_LENGTH, 20.0)
    s.add(stats_mod.EPISODE_LENGTH, 7.0, stats_mod.Aggregation.MOST_RECENT)  # Unity's: replaces the window
    s.add(stats_mod.EPISODE_LENGTH, 30.0)  # the trainer's again: appended, averaged
    s.add("Custom/Drops", 1.0, stats_mod.Aggregation.SUM)
    s.add("Custom/Drops", 5.0)  # the latest value's aggregation is the tag's
    out = s.summarize()
    length = out[stats_mod.EPISODE_LENGTH]
    assert (length.values, length.value, length.aggregation) == ((7.0, 30.0), 18.5, stats_mod.Aggregation.AVERAGE)
    assert (out["Custom/Drops"].value, out["Custom/Drops"].total) == (3.0, 6.0)


def test_gauges_carry_mlagents_names_with_mean_and_sum():
    from trainer_server.timers import HierarchicalTimer

    assert stats_mod.gauge_name("3DBall", "Environment/Cumulative Reward", "mean") == "3DBall.Environment.CumulativeReward.mean"
    timer = HierarchicalTimer()
    s = stats_mod.BehaviorStats()
    for r in (1.0, 2.0, 6.0):
        s.add(stats_mod.CUMULATIVE_REWARD, r, stats_mod.Aggregation.HISTOGRAM)
    s.add(stats_mod.IS_TRAINING, 1.0, stats_mod.Aggregation.MOST_RECENT)
    s.add("Losses/Value Loss", float("nan"))
    stats_mod.write_gauges(timer, "3DBall", s.summarize())
    gauges = timer.as_dict()["gauges"]
    assert gauges["3DBall.Environment.CumulativeReward.mean"] == {"value": 3.0, "min": 3.0, "max": 3.0, "count": 1}
    assert gauges["3DBall.Environment.CumulativeReward.sum"]["value"] == 9.0
    assert gauges["3DBall.IsTraining.mean"]["value"] == 1.0 and "3DBall.IsTraining.sum" in gauges
    assert not any("ValueLoss" in name for name in gauges)  # NaN is not a gauge value, as in ML-Agents


def test_tensorboard_gets_a_histogram_beside_a_histogram_tag_and_not_the_hidden_tags(tmp_path, caplog):
    s = stats_mod.BehaviorStats()
    for r in (1.0, 2.0, 6.0):
        s.add(stats_mod.CUMULATIVE_REWARD, r, stats_mod.Aggregation.HISTOGRAM)
    s.add(stats_mod.IS_TRAINING, 1.0, stats_mod.Aggregation.MOST_RECENT)
    s.add(stats_mod.STEP, 1190.0, stats_mod.Aggregation.MOST_RECENT)
    writer = stats_mod.TensorBoardWriter(tmp_path)
    writer.write(1200, s.summarize())
    writer.close()
    assert stats_mod.read_scalars(tmp_path) == {stats_mod.CUMULATIVE_REWARD: [(1200, 3.0)]}
    assert stats_mod.read_histograms(tmp_path) == {"Environment/Cumulative Reward_hist": [(1200, 3, 9.0)]}
    assert not [r for r in caplog.records if "is illegal" in r.getMessage()]  # no log line per summary
