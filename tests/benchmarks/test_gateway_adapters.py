"""bench_gateway's adapter rows: the goal is judged on the medians of each process group's CPU."""

from __future__ import annotations

from benchmarks import gateway_adapters

PLAIN, GYM, DM = list(gateway_adapters.MODES)


def _round(plain_gateway: float, gym_client: float, dm_gateway: float) -> dict:
    return {PLAIN: (100.0, 10.0, plain_gateway), GYM: (90.0, gym_client, plain_gateway), DM: (80.0, 20.0, dm_gateway)}


def test_render_sums_the_medians_of_client_and_gateway_cpu_and_judges_the_goal():
    # one round's gateway CPU swings (a busy second): the medians ignore it
    rounds = [_round(80.0, 14.0, 90.0), _round(82.0, 15.0, 91.0), _round(200.0, 14.5, 92.0)]
    work = {PLAIN: 0.5, DM: 1.7}  # client libraries' replayed work, us per agent-step
    text = gateway_adapters.render({256: (rounds, work)}, 1.5, 3)
    assert f"| 256 | {PLAIN} | 100 | 10.0 | 82.0 | 92.0 | 1.00x |" in text
    assert f"| 256 | {GYM} | 90 | 14.5 | 82.0 | 96.5 | 1.05x |" in text
    assert "Gymnasium VectorEnv costs <= 1.10x the plain client's CPU per agent-step, 256 agents: 1.05x, met" in text
    # dm_env_rpc: (20 + 91) / 92 = 1.21
    assert "dm_env_rpc costs <= 1.10x the plain client's CPU per agent-step, 256 agents: 1.21x, NOT met" in text
    # the replayed difference, and its share of the plain client's total: 1.2 / 92 = 1.3 %
    assert "| 256 | 0.5 | 1.7 | +1.2 |" in text
    assert "dm_env_rpc's own client work, replayed: +1.2 us per agent-step = 1.3 % of the plain client's total" in text
    assert "round 3:" in text and "--repeats 3 --seconds 1.5" in text
