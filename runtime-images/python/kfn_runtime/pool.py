"""An instance's execution environments: starting them (each with a Runtime API listener of its
own), bounding their init phase, killing them, and stopping the ones idle too long.

`EnvironmentPool` is the `InstanceHost`'s: how a process starts is its `Spawner`'s business, what
an environment that is gone means for its invocation is the host's (`InstanceHost.forget`).
It knows the host only as the `PoolHost` below (importing `kfn_runtime.host` would be a cycle).
"""
from __future__ import annotations

import asyncio
import contextlib
import time

from kfn_runtime.execution import DEAD, IDLE, READY, STARTING, Environment

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from kfn_runtime.execution import HostConfig
    from kfn_runtime.runtime_api import RuntimeAPI

    class PoolHost(Protocol):
        """What the pool needs of its instance host (`kfn_runtime.host.InstanceHost`)."""

        config: HostConfig
        state: str
        on_env_change: Callable[[], None]

        def runtime_api(self, env: Environment) -> RuntimeAPI:
            """A Runtime API connection (HTTP) for `env`."""

        def forget(self, env: Environment, why: str) -> None:
            """`env` is gone; `why` ends its invocation."""

    class PoolSpawner(Protocol):
        """The host's `Spawner`, as the pool uses it."""

        async def spawn(self, host: Any, env: Environment) -> None:
            """Start `env`'s process. Raises OSError if it cannot."""

        def kill(self, env: Environment) -> None:
            """Kill `env`'s process at once."""

        async def close(self) -> None:
            """Stop everything it started."""


class EnvironmentPool:
    """The environments of one instance host, by id."""

    def __init__(self, host: PoolHost, spawner: PoolSpawner, log: Callable[[str, str], None]) -> None:
        self._host = host
        self._spawner = spawner
        self._log = log   # (environment id, line): the instance's log
        self.envs: dict[str, Environment] = {}
        self._ids = 0

    @property
    def live(self) -> list[Environment]:
        """The environments not dead (starting, idle, busy or returning)."""
        return [env for env in self.envs.values() if env.state != DEAD]

    def idle(self) -> Environment | None:
        """An environment waiting for work, if any."""
        for env in self.envs.values():
            if env.state == IDLE:
                return env
        return None

    async def new(self, *, since: float | None = None) -> Environment:
        """Start an environment; `since`: when its init began, if before now (the instance's first).

        Returns once its process is spawned (it is ready when it polls). Raises what creating its
        listener or spawning raises (OSError), the environment then forgotten.
        """
        host = self._host
        self._ids += 1
        env = Environment(f"env-{self._ids}")
        if since is not None:
            env.started = since
        # Counted (as starting) before the first await: invocations arriving meanwhile must not
        # start environments of their own for the same need.
        self.envs[env.id] = env
        loop = asyncio.get_running_loop()
        try:
            env.server = await loop.create_server(lambda: host.runtime_api(env), "127.0.0.1", 0)
            env.port = env.server.sockets[0].getsockname()[1]
            await self._spawner.spawn(host, env)
        except BaseException:
            self.envs.pop(env.id, None)
            if env.server is not None:
                env.server.close()
            raise
        # Lambda bounds an environment's init; one that never asks for work must not hold its slot.
        # (The first one is bounded by `start`'s own timeout.)
        if host.state == READY:
            loop.call_later(host.config.init_timeout, self._init_overdue, env)
        host.on_env_change()
        return env

    def _init_overdue(self, env: Environment) -> None:
        if env.state == STARTING and self.envs.get(env.id) is env:
            self._log(env.id, f"Error: the environment did not ask for work within "
                              f"{self._host.config.init_timeout:g}s of starting (its init phase timed out)")
            self.kill(env, "init timed out")

    def kill(self, env: Environment, why: str) -> None:
        """Kill `env`'s process now and forget it (`why` ends its invocation, if any); no-op if dead."""
        if env.state == DEAD:
            return
        env.state = DEAD
        with contextlib.suppress(ProcessLookupError, OSError):
            self._spawner.kill(env)
        self._host.forget(env, why)

    async def reap_idle(self) -> None:
        """Stops environments idle for longer than idle_timeout, keeping one; runs until cancelled."""
        config = self._host.config
        interval = max(0.5, min(10.0, config.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            idle = sorted((e for e in self.envs.values() if e.state == IDLE), key=lambda e: e.last_used)
            live = len(self.live)
            for env in idle:
                if live <= 1:
                    break
                if now - env.last_used > config.idle_timeout:
                    self.kill(env, "idle")
                    live -= 1

    async def close(self, why: str) -> None:
        """Kill every environment (`why` ends their invocations), stop what the spawner started and
        close the listeners; returns once the spawner has stopped everything."""
        for env in list(self.envs.values()):
            self.kill(env, why)
        await self._spawner.close()
        for env in list(self.envs.values()):
            if env.server is not None:
                env.server.close()
        self.envs.clear()
