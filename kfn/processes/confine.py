"""Where the OS allows it, each local instance runs in a cgroup: all of it dies when it stops, and
its memory is limited to the function's `spec.resources.limits.memory`, as a pod's is.

Process groups (every environment leads one) already take what a handler starts when its
environment is killed; a handler that daemonizes (`setsid`, a double fork) leaves its group, but
never its cgroup. So:

- **cleanup**: an instance's processes join a cgroup of their own in the cgroup v2 hierarchy
  (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid systems), entered before `exec`, so
  nothing escapes it (a Python instance's zygote is moved in from outside, `adopt`, while it
  starts and before it runs anything of the function: its environments are its forks);
  stopping the instance kills the cgroup (`cgroup.kill`, or each process);
- **memory**: that cgroup gets `memory.max` where the v2 memory controller is delegated, else the
  instance gets a cgroup v1 memory cgroup with `memory.limit_in_bytes`. The kernel then kills a
  process of the instance that goes over, and `memory.events`/`memory.oom_control` count it, so
  the invocation it ran is reported as `Runtime.OutOfMemory` (`kfn.processes.supervisor`);
- **fallback**: without writable cgroups (an unprivileged user on a system without delegation),
  every process of the instance gets `RLIMIT_DATA` = the limit: an allocation past it fails
  (Python's MemoryError), which is reported the same way.

`Confinement.create` finds what works, once per `kfn local`; nothing here raises for a missing
feature: it degrades to the next mechanism, and to process groups alone. It also kills and removes
what a `kfn local` that died without cleaning up (SIGKILL) left in both hierarchies: the
`kfn-local-PID` directories whose process is gone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

V2_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))
V1_MEMORY_ROOT = Path("/sys/fs/cgroup/memory")
# Killing an instance's cgroup: a process forking while it is killed may need another round.
KILL_ROUNDS = 20


def _own_cgroup(controller: str | None) -> str | None:
    """This process's cgroup path in the v2 hierarchy (controller None) or a v1 controller's."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller is None and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return None


def _v2_root() -> Path | None:
    for root in V2_ROOTS:
        if (root / "cgroup.procs").exists() and (root / "cgroup.controllers").exists():
            return root
    return None


def _write(path: Path, text: str) -> bool:
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def _mkdir(path: Path) -> bool:
    try:
        path.mkdir(exist_ok=True)
        return (path / "cgroup.procs").exists()
    except OSError:
        return False


@dataclass
class InstanceGroup:
    """One instance's confinement: the cgroups its processes join, and its memory limit."""

    name: str
    memory_bytes: int
    dirs: list[Path] = field(default_factory=list)     # cgroups to join (v2 first, then v1 memory)
    v2: Path | None = None
    memory_events: Path | None = None                  # where OOM kills are counted
    rlimit: bool = False                                # RLIMIT_DATA instead of a cgroup limit
    _oom_kills: int = 0

    @property
    def mechanism(self) -> str:
        if self.memory_events is not None:
            return f"a cgroup memory limit of {self.memory_bytes // (1024 * 1024)} MiB"
        if self.rlimit:
            return f"RLIMIT_DATA of {self.memory_bytes // (1024 * 1024)} MiB per process"
        return "no memory limit"

    def preexec(self) -> Callable[[], None]:
        """What a process of the instance runs after fork, before exec: join the cgroups, or take
        the rlimit. Must not raise (a failure leaves the process unconfined, not unstarted)."""
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        limit = self.memory_bytes if self.rlimit else None

        def enter() -> None:
            for path in procs:
                try:
                    fd = os.open(path, os.O_WRONLY)
                    try:
                        os.write(fd, b"0")
                    finally:
                        os.close(fd)
                except OSError:
                    pass
            if limit is not None:
                try:
                    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
                except (OSError, ValueError):
                    pass

        return enter

    def adopt(self, pid: int) -> None:
        """What `preexec` does, done from outside to process `pid`, which has run nothing of the
        function yet and waits for it (the zygote): move it into the cgroups, or give it the
        rlimit; what it forks then is confined from the start. Blocking (a cgroup migration takes
        milliseconds: call it off the event loop); never raises (it stays unconfined)."""
        for d in self.dirs:
            _write(d / "cgroup.procs", str(pid))
        if self.rlimit:
            with contextlib.suppress(OSError, ValueError):
                resource.prlimit(pid, resource.RLIMIT_DATA, (self.memory_bytes, self.memory_bytes))

    def oom_kills(self) -> int:
        """How many of the instance's processes the kernel has killed for its memory limit."""
        if self.memory_events is None:
            return 0
        try:
            text = self.memory_events.read_text()
        except OSError:
            return self._oom_kills
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                self._oom_kills = int(value)
        return self._oom_kills

    def pids(self) -> list[int]:
        out: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                out.update(int(line) for line in (d / "cgroup.procs").read_text().split())
        return sorted(out)

    def kill(self) -> int:
        """SIGKILL every process left in the instance's cgroups (blocking, bounded); how many there were."""
        found = self.pids()
        if not found:
            return 0
        if self.v2 is not None and _write(self.v2 / "cgroup.kill", "1"):
            pass
        for _ in range(KILL_ROUNDS):
            left = self.pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
        return len(found)

    def remove(self) -> None:
        """Remove the cgroups (after `kill`; bounded retries while the last processes are reaped)."""
        for d in reversed(self.dirs):
            for _ in range(KILL_ROUNDS):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


@dataclass
class Confinement:
    """What this machine lets local mode do; `instance(...)` makes one instance's group."""

    v2: Path | None = None            # the directory holding instance cgroups in the v2 hierarchy
    v2_memory: bool = False           # its children get memory.max
    v1_memory: Path | None = None     # the directory holding instance memory cgroups (v1)

    @classmethod
    def create(cls, name: str) -> Confinement:
        """Make `name` directories under this process's own cgroups where allowed (after killing
        what a `kfn local` that died without stopping its instances left in its own)."""
        out = cls()
        root = _v2_root()
        own = _own_cgroup(None)
        if root is not None and own is not None:
            _reap_orphans(root / own.lstrip("/"))
            base = root / own.lstrip("/") / name
            if _mkdir(base):
                out.v2 = base
                if "memory" in _read(base / "cgroup.controllers").split():
                    out.v2_memory = _write(base / "cgroup.subtree_control", "+memory")
        own_memory = _own_cgroup("memory")
        if V1_MEMORY_ROOT.is_dir() and own_memory is not None:
            # Whether or not this run uses it: a v1 memory cgroup left by a killed run is removed.
            _reap_orphans(V1_MEMORY_ROOT / own_memory.lstrip("/"), v2=False)
            if not out.v2_memory:
                base = V1_MEMORY_ROOT / own_memory.lstrip("/") / name
                if _mkdir(base):
                    out.v1_memory = base
        return out

    def describe(self) -> str:
        parts = []
        if self.v2 is not None:
            parts.append(f"cgroups under {self.v2}")
        if self.v2_memory:
            parts.append("memory limits by memory.max")
        elif self.v1_memory is not None:
            parts.append(f"memory limits by the v1 memory controller ({self.v1_memory})")
        else:
            parts.append("memory limits by RLIMIT_DATA")
        return ", ".join(parts) if self.v2 is not None else "process groups only; " + parts[-1]

    def instance(self, name: str, memory_bytes: int) -> InstanceGroup:
        group = InstanceGroup(name=name, memory_bytes=memory_bytes)
        if self.v2 is not None and _mkdir(self.v2 / name):
            group.v2 = self.v2 / name
            group.dirs.append(group.v2)
            if self.v2_memory and _write(group.v2 / "memory.max", str(memory_bytes)):
                group.memory_events = group.v2 / "memory.events"
        if group.memory_events is None and self.v1_memory is not None:
            d = self.v1_memory / name
            if _mkdir(d) and _write(d / "memory.limit_in_bytes", str(memory_bytes)):
                group.dirs.append(d)
                group.memory_events = d / "memory.oom_control"
        group.rlimit = group.memory_events is None
        return group

    def remove(self) -> None:
        for d in (self.v2, self.v1_memory):
            if d is not None:
                with contextlib.suppress(OSError):
                    d.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _reap_orphans(parent: Path, *, v2: bool = True) -> None:
    """Kill and remove the instance cgroups of `kfn local` processes that no longer run (SIGKILLed
    ones never removed their own), in the v2 hierarchy or the v1 memory one (`v2` False). Those of a
    live process are left alone. Failures leave a directory for the next start; never raises."""
    try:
        leftovers = [d for d in parent.glob("kfn-local-*") if d.is_dir()]
    except OSError:
        return
    for base in leftovers:
        pid = base.name.removeprefix("kfn-local-")
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        try:
            instances = [d for d in base.iterdir() if d.is_dir()]
        except OSError:
            continue
        for instance in instances:
            group = InstanceGroup(name=instance.name, memory_bytes=0, dirs=[instance], v2=instance if v2 else None)
            killed = group.kill()
            if killed:
                logger.warning("killed %d process(es) left by kfn local %s (instance %s)", killed, pid, instance.name)
            group.remove()
        with contextlib.suppress(OSError):
            base.rmdir()
