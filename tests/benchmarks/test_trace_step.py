"""The step-timeline diagnostic: its probes still name real functions, and its segment arithmetic."""

import importlib

import pytest

from benchmarks import trace_step


@pytest.mark.parametrize("role", sorted(trace_step.PROBES))
def test_every_probe_names_a_callable(role):
    for module_name, path, _ in trace_step.PROBES[role]:
        owner = importlib.import_module(module_name)
        for part in path.split("."):
            owner = getattr(owner, part)
        assert callable(owner), f"{module_name}.{path}"


def test_segments_are_medians_over_steps_with_the_usual_sequence():
    def usual(t):  # 10 us, then 3 us (timestamps in ns)
        return [("a", t), ("b", t + 10_000), ("c", t + 13_000)]

    marks = [(t, usual(t)) for t in (0, 100_000, 200_000)]
    marks.append((300_000, [("a", 300_000), ("c", 400_000)]))  # a step missing an event: left out
    marks.append((500_000, [("a", 500_000), ("b", 530_000), ("c", 531_000)]))  # 30 us, then 1 us
    assert trace_step._segments(marks) == [("a -> b", 10.0), ("b -> c", 3.0)]


def test_probes_record_begin_and_end_and_keep_the_result(tmp_path, monkeypatch):
    recorder = trace_step.Recorder(str(tmp_path / "events.json"))
    monkeypatch.setitem(trace_step.PROBES, "test", [("benchmarks.trace_step", "_load", "load")])
    monkeypatch.setattr(trace_step, "_load", trace_step._load)  # restored after the test
    trace_step.install("test", recorder)
    assert trace_step._load([]) == []
    assert [name for name, _ in recorder.events] == ["load begin", "load end"]
    recorder.flush()
    assert (tmp_path / "events.json").read_text().startswith("[[")
