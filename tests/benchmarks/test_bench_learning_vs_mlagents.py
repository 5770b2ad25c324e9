"""bench_learning_vs_mlagents: console parsing, milestones, merging and the table, without training."""

from __future__ import annotations

import yaml

from benchmarks import bench_learning_vs_mlagents as bench

TANDEM_LOG = """\
[INFO] gateway started
[INFO] 3DBall. Step: 12012. Time Elapsed: 11.670 s. Mean Reward: 1.687. Std of Reward: 0.920. Training.
[INFO] Other. Step: 12000. Time Elapsed: 11.000 s. Mean Reward: 50.000. Std of Reward: 0.000. Training.
[INFO] 3DBall. Step: 24031. Time Elapsed: 12.778 s. No episode was completed since last summary. Training.
[INFO] 3DBall. Step: 36000. Time Elapsed: 20.1 s. Mean Reward: -0.010. Std of Reward: 0.5. Training.
"""
MLAGENTS_LOG = """\
[INFO] Connected new brain: 3DBall?team=0
[INFO] 3DBall. Step: 12000. Time Elapsed: 10.328 s. Mean Reward: 1.578. Std of Reward: 0.914. Training.
[INFO] 3DBall. Step: 24000. Time Elapsed: 22.037 s. Mean Reward: 100.000. Std of Reward: 1.384. Training.
"""


def test_parse_console_reads_both_sides_and_skips_other_behaviors():
    assert bench.parse_console(TANDEM_LOG, "3DBall") == [(12012, 1.687), (24031, None), (36000, -0.01)]
    assert bench.parse_console(MLAGENTS_LOG, "3DBall") == [(12000, 1.578), (24000, 100.0)]
    assert bench.parse_console(MLAGENTS_LOG, "GridWorld") == []


def test_reward_at_takes_the_nearest_summary_within_half_the_spacing():
    summaries = [(11990, 1.0), (12400, 2.0), (24031, None), (30500, 3.0)]
    assert bench.reward_at(summaries, 12000, 12000) == 1.0
    assert bench.reward_at(summaries, 24000, 12000) is None  # nearest has no episode, next too far
    assert bench.reward_at(summaries, 36000, 12000) == 3.0
    assert bench.reward_at(summaries, 60000, 12000) is None


def test_first_solved_and_spread():
    assert bench.first_solved([(1, 5.0), (2, None), (3, 100.0), (4, 101.0)], 100.0) == 3
    assert bench.first_solved([(1, 5.0)], 100.0) is None
    assert bench.spread([1.0, 3.0, None], 1) == "2.0 (1.0..3.0), 1 n/a"
    assert bench.spread([None], 1) == "-"


def test_merge_runs_replaces_only_the_same_side_case_and_seed():
    old = [
        {"side": "mlagents", "case": "ppo-3dball", "seed": 1, "tag": "keep"},
        {"side": "tandem", "case": "ppo-3dball", "seed": 1, "tag": "old"},
    ]
    new = [{"side": "tandem", "case": "ppo-3dball", "seed": 1, "tag": "new"}]
    merged = bench.merge_runs(old, new)
    assert sorted(r["tag"] for r in merged) == ["keep", "new"]


def _run(side, seed, summaries):
    return {"side": side, "case": "ppo-3dball", "seed": seed, "max_steps": 36000, "summary_freq": 12000,
            "rc": 0, "wall_s": 1.0, "summaries": summaries}


def test_render_aggregates_seeds_per_milestone_and_solved_step():
    runs = [
        _run("tandem", 1, [(12010, 10.0), (24005, 100.0), (36002, 100.0)]),
        _run("tandem", 2, [(12003, 20.0), (24001, 50.0), (36010, 100.0)]),
        _run("mlagents", 1, [(12000, 30.0), (24000, 90.0), (36000, 100.0)]),
    ]
    runs[0]["command"] = "python -m benchmarks.bench_learning_vs_mlagents --only tandem"
    text = bench.render(runs)
    assert "| 12,000 | 15.0 (10.0..20.0) | 30.0 (30.0..30.0) |" in text
    assert "| 24,000 | 75.0 (50.0..100.0) | 90.0 (90.0..90.0) |" in text
    assert "30,008 (24,005..36,010) [24,005, 36,010]" in text
    assert "36,000 (36,000..36,000) [36,000]" in text
    assert "--only tandem" in text


def test_write_config_changes_only_the_run_length_and_checkpoints(tmp_path):
    case = bench.CASES["ppo-3dball"]
    path, summary_freq = bench.write_config(case, 24000, tmp_path)
    written = yaml.safe_load(path.read_text())["behaviors"]["3DBall"]
    original = yaml.safe_load(bench._config_path(case).read_text())["behaviors"]["3DBall"]
    assert written["max_steps"] == 24000 and written["checkpoint_interval"] > 24000 and summary_freq == 12000
    run_only = ("max_steps", "checkpoint_interval")
    assert {k: v for k, v in written.items() if k not in run_only} == {k: v for k, v in original.items() if k not in run_only}


def test_commands_pass_the_same_config_seed_and_task(tmp_path):
    case = bench.CASES["ppo-gridworld"]
    tandem = bench.command_for("tandem", case, tmp_path / "c.yaml", 2, tmp_path, None)
    ml = bench.command_for("mlagents", case, tmp_path / "c.yaml", 2, tmp_path, "/venv/bin/mlagents-learn")
    for cmd in (tandem, ml):
        assert str(tmp_path / "c.yaml") in cmd and cmd[cmd.index("--seed") + 1] == "2"
        assert cmd[-3:] == ["--env-args", "--task", "gridworld"]
    assert "--with-gateway" in tandem and ml[0] == "/venv/bin/mlagents-learn"


def test_render_only_merges_raw_files_without_training(tmp_path):
    import json

    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    ours.write_text(json.dumps([_run("tandem", 1, [(12000, 10.0)])]))
    theirs.write_text(json.dumps([_run("mlagents", 1, [(12000, 30.0)]), _run("tandem", 1, [(12000, 99.0)])]))
    out = tmp_path / "table.md"
    assert bench.main(["--render-only", "--raw", str(ours), "--merge", str(theirs), "--output", str(out)]) == 0
    # the merged file's tandem run replaces ours (same side, case and seed), the mlagents one joins
    assert "| 12,000 | 99.0 (99.0..99.0) | 30.0 (30.0..30.0) |" in out.read_text()
    assert len(json.loads(ours.read_text())) == 2
