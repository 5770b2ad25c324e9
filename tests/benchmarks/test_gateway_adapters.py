"""bench_gateway's adapter rows: the goal is judged on each round's ratio to the plain client, their median."""

from __future__ import annotations

from benchmarks import gateway_adapters
from benchmarks.gateway_adapters import DM_ADAPTOR, DM_CONNECTION, GYM, PLAIN


def _round(load: float, gym_client: float, dm_gateway: float, gym_gateway: float = 80.0, gym_trips: float = 0.2) -> dict:
    """One round: every mode's CPU scaled by the round's ``load`` (a busy stretch costs every mode more)."""
    return {
        PLAIN: (100.0, 10.0 * load, 80.0 * load, 0.2),
        GYM: (90.0, gym_client * load, gym_gateway * load, gym_trips),
        DM_CONNECTION: (80.0, 12.0 * load, dm_gateway * load, 0.05),
        DM_ADAPTOR: (70.0, 20.0 * load, dm_gateway * load, 0.05),
    }


def test_render_judges_the_median_of_paired_ratios_on_our_adapters():
    # round 3 ran on a busy stretch: its medians of each part would be off, its ratios are not
    rounds = [_round(1.0, 14.0, 90.0), _round(1.0, 15.0, 91.0), _round(2.0, 14.5, 92.0)]
    work = {PLAIN: 0.5, DM_CONNECTION: 0.9, DM_ADAPTOR: 1.7}  # client libraries' replayed work, us per agent-step
    text = gateway_adapters.render({256: (rounds, work)}, 1.5, 3)
    # plain: 90 per step in rounds 1-2; gym (14 + 80) / 90 = 1.044, (15 + 80) / 90 = 1.056, (29 + 160) / 180 = 1.050
    assert f"| 256 | {PLAIN} | 100 | 1.00x | 0.200 | 10.0 | 80.0 | 90.0 | 1.00x [1.00-1.00] |" in text
    assert f"| 256 | {GYM} | 90 | 0.90x | 0.200 | 15.0 | 80.0 | 95.0 | 1.05x [1.04-1.06] |" in text
    assert f"{GYM} costs <= 1.10x the plain client's CPU per agent-step, 256 agents: 1.05x, met (the client's extra CPU" in text
    # dm Connection: (12 + 90) / 90 = 1.133, (12 + 91) / 90 = 1.144, (24 + 184) / 180 = 1.156
    assert f"{DM_CONNECTION} costs <= 1.10x the plain client's CPU per agent-step, 256 agents: 1.14x, NOT met" in text
    assert f"{DM_ADAPTOR} costs <= 1.10x the plain client's CPU per agent-step, 256 agents: 1.23x, shown, not judged" in text
    # DmEnvAdaptor's replayed work over the Connection loop's, as a share of the plain client's total: 0.8 / 90
    assert "over the plain Connection loop's, replayed: +0.8 us per agent-step = 0.9 % of the plain client's total" in text
    assert "| 256 | 0.5 | 0.9 | 1.7 |" in text
    assert "round 3:" in text and "--adapter-rounds 3 --adapter-seconds 1.5" in text


def test_the_gym_rows_leave_the_gateway_s_noise_out_only_when_they_send_the_plain_requests():
    # the gateway's CPU for the same requests swings by 20 % (noise): judged on the client's extra, (12 - 10) / 90
    noisy = [_round(1.0, 12.0, 90.0, gym_gateway=96.0), _round(1.0, 12.0, 90.0, gym_gateway=100.0)]
    text = gateway_adapters.render({16: (noisy, {PLAIN: 1.0, DM_CONNECTION: 1.0, DM_ADAPTOR: 1.0})}, 1.0, 2)
    assert f"{GYM} costs <= 1.10x the plain client's CPU per agent-step, 16 agents: 1.02x, met (the client's extra CPU" in text
    # more round trips per agent-step than the plain client: different gateway work, the whole ratio counts
    more = [_round(1.0, 12.0, 90.0, gym_gateway=96.0, gym_trips=0.3)] * 2
    text = gateway_adapters.render({16: (more, {PLAIN: 1.0, DM_CONNECTION: 1.0, DM_ADAPTOR: 1.0})}, 1.0, 2)
    assert f"{GYM} costs <= 1.10x the plain client's CPU per agent-step, 16 agents: 1.20x, NOT met (medians" in text


def test_paired_ratios_cancel_a_round_s_load():
    rounds = [_round(1.0, 10.0, 80.0), _round(3.0, 10.0, 80.0)]
    assert gateway_adapters.paired_ratios(rounds, GYM) == [1.0, 1.0]
