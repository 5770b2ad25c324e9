"""Training statistics: aggregations and the console summary line."""

from __future__ import annotations

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
