"""One behavior's agents driven through a gateway's Play stream, as fixed rows.

Why: ``UnityEnv`` and ``UnityVectorEnv`` differ only in how many rows they accept and
what they return; connecting, choosing the behavior, encoding actions and following the
rows (``gateway.remote.agent_slots``) is the same and lives here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from common.specs import BehaviorSpec
from gateway.remote.agent_slots import AgentSlots, SlotStep, discover, step_until
from gateway.remote.client import GatewayClient, PlaySession, behavior_actions, decode_steps


def choose_behavior(specs: Mapping[str, BehaviorSpec], behavior: str | None) -> BehaviorSpec:
    """The behavior called ``behavior`` (full name ``3DBall?team=0`` or ``3DBall``), or the only one.

    Raises:
        ValueError: naming the known behaviors when the choice is missing or ambiguous.
    """
    known = sorted(specs)
    if behavior is None:
        if len(specs) != 1:
            raise ValueError(f"behavior: the gateway has {len(specs)} behaviors, name one of {known}")
        return specs[known[0]]
    if behavior in specs:
        return specs[behavior]
    matches = [name for name in known if specs[name].brain_name == behavior]
    if len(matches) != 1:
        raise ValueError(f"behavior: {behavior!r} is not one of the gateway's behaviors {known}")
    return specs[matches[0]]


def connect(
    address: str,
    *,
    token: str | None = None,
    root_certificates: bytes | None = None,
    tls_server_name: str | None = None,
    timeout_s: float = 30.0,
) -> tuple[GatewayClient, dict[str, BehaviorSpec]]:
    """A client of the gateway at ``address`` and its behaviors' specs (the client is closed on failure).

    Args:
        address: the gateway's ``host:port``.
        token: bearer token, if the gateway requires one.
        root_certificates: PEM CA bytes to connect over TLS.
        tls_server_name: the name the gateway's certificate is for, if not the host's.
        timeout_s: deadline of Describe.
    """
    client = GatewayClient(
        address, token=token, root_certificates=root_certificates, timeout_s=timeout_s, tls_server_name=tls_server_name
    )
    try:
        return client, client.specs()
    except BaseException:
        client.close()
        raise


class BehaviorDriver:
    """A gateway client stepping one behavior's agents as rows.

    Args:
        address: the gateway's ``host:port``.
        behavior: the behavior to drive (see ``choose_behavior``).
        environment_parameters: sent with every reset (``EnvironmentParametersChannel``).
        **connection: ``token``, ``root_certificates``, ``tls_server_name``, ``timeout_s`` (see ``connect``).
    """

    def __init__(
        self,
        address: str,
        behavior: str | None = None,
        *,
        environment_parameters: Mapping[str, float] | None = None,
        **connection,
    ) -> None:
        self.client, self.specs = connect(address, **connection)
        try:
            self.spec = choose_behavior(self.specs, behavior)
        except ValueError:
            self.client.close()
            raise
        self.slots = AgentSlots(self.spec)
        self.parameters = dict(environment_parameters or {})
        self._session: PlaySession | None = None

    def _play(self) -> PlaySession:
        if self._session is None:  # opened at the first reset: constructing never takes the Play stream
            self._session = self.client.play()
        return self._session

    def _views(self, steps):
        return decode_steps(steps, self.specs, only=self.spec.name)

    def reset(
        self, parameters: Mapping[str, float] | None = None, discover_agents: bool = False, known=()
    ) -> SlotStep:
        """Resets every instance; the agents with a decision become the rows (``slots.n`` of them).

        With ``discover_agents``, every agent of the behavior gets a row, also those that
        decide later than right after a reset (``agent_slots.discover``: one more reset);
        ``known`` (instance, agent id) pairs get rows too (a vector env keeps its slots).
        """
        params = {**self.parameters, **(parameters or {})}
        known = set(known)
        if discover_agents:
            known |= discover(
                self.spec.name, lambda: self._views(self._play().reset(params)), lambda: self._views(self._play().step())
            )
        return self.slots.start(self._views(self._play().reset(params)), known)

    def step(self, continuous: np.ndarray | None, discrete: np.ndarray | None, until) -> SlotStep:
        """Acts for the pending rows, then steps until ``until(merged steps)`` (see ``agent_slots.step_until``)."""
        return step_until(self.slots, self._step_once, (continuous, discrete), until)

    def _step_once(self, actions):
        messages = []
        if actions is not None:
            for instance, (ids, cont, disc) in self.slots.pending_actions(*actions).items():
                messages.append(behavior_actions(instance, self.spec.name, ids, cont, disc))
        return self._views(self._play().step(messages))

    def close(self) -> None:
        """Ends the Play stream (the gateway keeps Unity running) and the channel; safe to call twice."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self.client.close()
