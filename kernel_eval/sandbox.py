"""Process sandbox: run one untrusted step (compile or run a candidate) in a fresh, disposable Python process.

    outcome = run_in_sandbox("run", request, SandboxLimits(wall_s=60, memory_mb=8192), on_message=handler)
    sb = acquire_sandbox(limits, warm=1); <put files under sb.workdir>; outcome = sb.run("run", request, handler)

The child is `python -I -c "...kernel_eval.child.main()"`, spawned with subprocess (never forked from a parent that
imported torch or initialized CUDA). The parent never imports candidate code. Parent and child speak a strict protocol:
the request is one JSON line on the child's stdin; the child answers on a dedicated pipe (not stdout, which the
candidate may print to) with frames of one JSON header line, optionally followed by `nbytes` raw bytes (tensor data;
never pickles, so the parent deserializes nothing executable). The parent may answer a frame with a JSON line on
stdin (the run protocol asks "time?" after correctness was judged).

Start-up: the child imports torch (and the evaluator's own modules) BEFORE it reads its request, so a WarmPool can
spawn processes ahead of time and hide the ~1.5 s CPU of the torch import: `acquire_sandbox(..., warm=N)` hands out
an already started process (each still serves exactly one request and is then killed) and spawns its replacement.

Covered
- Fresh process per call, own temporary directory (cwd, HOME, TMPDIR, TORCH_EXTENSIONS_DIR), removed afterwards.
- Scrubbed environment: only PATH, LANG/LC_*, CUDA/compiler variables and the thread count survive; no secrets.
- Resource limits set in the child before exec: RLIMIT_CPU (CPU seconds), RLIMIT_FSIZE (file size), RLIMIT_AS
  (address space, CPU runs only: CUDA reserves huge virtual ranges), RLIMIT_NPROC (non-root users only: the limit
  counts every process of the uid and root ignores it), RLIMIT_CORE=0.
- New session / process group; on timeout or when the child ends, the WHOLE group gets SIGKILL (left-over daemons
  and threads of the candidate die with it).
- Hard wall-clock timeout; a crash (signal), os._exit, a hang, MemoryError or a CPU-time kill becomes a named
  outcome ("crash", "process_exit", "timeout", "memory_limit").
- No network when the kernel lets us create a network namespace (root, or unprivileged user namespaces for CPU
  runs); `SandboxOutcome.network_isolated` says whether it happened.

Not covered (be honest)
- File system isolation: the child runs as the evaluator's uid and can read or write what that uid can (the build
  cache included, if it finds its path); it is not told where the cache is, and runs get private copies of their
  extensions. Use a container or a separate uid for stronger isolation.
- A candidate that finds the protocol pipe can write fake frames. It cannot fake outputs it could not compute
  anyway (the comparison happens in the parent), but in-process timing relies on the static checks (no monkey
  patching of timers); see kernel_eval/child.py.
- Without a network namespace (non-root on a host without user namespaces, and GPU runs as non-root) sockets work.
- GPU memory is not limited per process (a runner owns its GPU exclusively while it runs).
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENTRY = f"import sys; sys.path.insert(0, {ROOT!r}); from kernel_eval.child import main; main()"
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "CUDA_VISIBLE_DEVICES", "CUDA_HOME", "CUDA_PATH", "CC", "CXX",
             "LD_LIBRARY_PATH", "TORCH_CUDA_ARCH_LIST", "NVIDIA_VISIBLE_DEVICES", "CPATH", "LIBRARY_PATH")
MAX_FRAME_BYTES = 4 << 30       # a child that claims more than this in one frame is broken or hostile
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000


@dataclass
class SandboxLimits:
    wall_s: float = 60.0                 # hard wall-clock limit; the process group is killed after it
    cpu_s: Optional[int] = None          # RLIMIT_CPU per process (default: wall_s + 5)
    memory_mb: Optional[int] = 8192      # RLIMIT_AS; None on GPU
    file_mb: int = 1024                  # RLIMIT_FSIZE
    nproc: int = 256                     # extra processes/threads allowed (non-root only)
    isolate_network: bool = True


@dataclass
class SandboxOutcome:
    returncode: Optional[int]
    timed_out: bool
    wall_s: float
    frames: list = field(default_factory=list)   # [(header: dict, payload: bytes | None)]
    stderr_tail: str = ""
    stdout_tail: str = ""
    network_isolated: bool = False
    protocol_error: Optional[str] = None
    warm_s: float = 0.0          # how long the process had been up before it got its request (~0: spawned cold)
    startup_s: Optional[float] = None   # request sent -> child ready ("started" frame): start-up on the critical path
    cpu_s: Optional[float] = None       # CPU seconds of the child and the descendants it reaped (compilers)

    @property
    def signal_name(self) -> Optional[str]:
        if self.returncode is not None and self.returncode < 0:
            try:
                return signal.Signals(-self.returncode).name
            except ValueError:
                return f"signal {-self.returncode}"
        return None

    def last(self, kind: str) -> Optional[dict]:
        for header, _ in reversed(self.frames):
            if header.get("type") == kind:
                return header
        return None


def scrubbed_env(home: str, threads: int, extra: Optional[dict] = None) -> dict:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    # the interpreter's own bin dir (ninja lives in the virtualenv's bin)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.update(HOME=home, TMPDIR=home, TORCH_EXTENSIONS_DIR=os.path.join(home, "torch_ext"),
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0",
               PYTHONDONTWRITEBYTECODE="1")
    env.update(extra or {})
    return env


def _count_user_tasks(uid: int) -> int:
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


try:                       # loaded here, not between fork and exec: dlopen in a forked child of a threaded parent
    _LIBC = ctypes.CDLL(None, use_errno=True)       # (Ray workers, thread pools) can deadlock on the loader lock
except OSError:
    _LIBC = None


def _unshare_net(allow_user_ns: bool) -> bool:
    try:
        libc = _LIBC
        if libc is None:
            return False
        if libc.unshare(CLONE_NEWNET) == 0:
            return True
        return allow_user_ns and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
    except Exception:
        return False


def _preexec(limits: SandboxLimits, nproc_now: int, net_flag_fd: int, allow_user_ns: bool) -> Callable[[], None]:
    def apply() -> None:   # runs in the child between fork and exec: no allocations-heavy work, no locks
        cpu = int(limits.cpu_s or limits.wall_s + 5)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        fsz = limits.file_mb << 20
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsz, fsz))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if limits.memory_mb:
            mem = limits.memory_mb << 20
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        if os.getuid() != 0:
            cap = nproc_now + limits.nproc
            hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
            resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap if hard == resource.RLIM_INFINITY else min(cap, hard)))
        ok = limits.isolate_network and _unshare_net(allow_user_ns)
        os.write(net_flag_fd, b"1" if ok else b"0")
        os.close(net_flag_fd)
    return apply


class _FrameReader:
    """Incremental parser of the child's frames: b'{json}\\n' then header['nbytes'] raw bytes."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.frames: list = []
        self.error: Optional[str] = None

    def feed(self, data: bytes) -> list:
        self.buf += data
        new = []
        while self.error is None:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > (1 << 20):
                    self.error = "header line longer than 1 MiB"
                break
            try:
                header = json.loads(bytes(self.buf[:nl]))
                if not isinstance(header, dict):
                    raise ValueError("header is not an object")
                nbytes = int(header.get("nbytes", 0))
                if not 0 <= nbytes <= MAX_FRAME_BYTES:
                    raise ValueError(f"bad nbytes {nbytes}")
            except (ValueError, TypeError) as e:
                self.error = f"bad frame header: {e}"
                break
            if len(self.buf) < nl + 1 + nbytes:
                break
            payload = bytes(self.buf[nl + 1:nl + 1 + nbytes]) if nbytes else None
            del self.buf[:nl + 1 + nbytes]
            new.append((header, payload))
        self.frames.extend(new)
        return new


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - n))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


class Sandbox:
    """One spawned sandbox process bound to its own fresh directory; serves exactly one request (`run`), then is
    killed. Spawned cold by `Sandbox.spawn`, or ahead of time by a WarmPool (torch is then already imported)."""

    def __init__(self, limits: SandboxLimits, threads: int, extra_env: Optional[dict], workdir: Optional[str],
                 parent_dir: Optional[str] = None) -> None:
        self.limits = limits
        self.own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="kev-", dir=parent_dir)
        self.spawned_at = time.monotonic()
        self.used = False
        msg_r, msg_w = os.pipe()
        flag_r, flag_w = os.pipe()
        self.out_path, self.err_path = os.path.join(self.workdir, ".stdout"), os.path.join(self.workdir, ".stderr")
        allow_user_ns = (limits.memory_mb is not None)        # user namespaces only for CPU runs (see docstring)
        with open(self.out_path, "wb") as out_f, open(self.err_path, "wb") as err_f:
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-c", _ENTRY], stdin=subprocess.PIPE, stdout=out_f, stderr=err_f,
                    cwd=self.workdir, env=scrubbed_env(self.workdir, threads, extra_env), start_new_session=True,
                    pass_fds=(msg_w, flag_w), close_fds=True,
                    preexec_fn=_preexec(limits, _count_user_tasks(os.getuid()) if os.getuid() else 0, flag_w,
                                        allow_user_ns))
            except BaseException:
                os.close(msg_r)
                raise
            finally:
                os.close(msg_w)
                os.close(flag_w)
        self.msg_fd = msg_w                                   # the number the child sees (pass_fds keeps it)
        self.msg_r = msg_r
        self.network_isolated = os.read(flag_r, 1) == b"1"
        os.close(flag_r)

    @classmethod
    def spawn(cls, limits: SandboxLimits, threads: int = 1, extra_env: Optional[dict] = None,
              workdir: Optional[str] = None, parent_dir: Optional[str] = None) -> "Sandbox":
        return cls(limits, threads, extra_env, workdir, parent_dir)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def discard(self) -> None:
        """Kill an unused sandbox and remove its directory."""
        _kill_group(self.proc)
        try:
            os.close(self.msg_r)
        except OSError:
            pass
        if self.own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, mode: str, request: dict,
            on_message: Optional[Callable[[dict, Optional[bytes]], Optional[dict]]] = None,
            keep_workdir: bool = False) -> SandboxOutcome:
        """Send the one request, exchange frames until the child ends or the wall clock runs out, kill the group.
        A run child's "done" frame ends the exchange at once: its exit (on CUDA a context to tear down) is not
        waited for, the group is killed and reaped on a background thread."""
        if self.used:
            raise RuntimeError("a sandbox serves exactly one request")
        self.used = True
        limits, proc = self.limits, self.proc
        t0 = time.monotonic()
        reader = _FrameReader()
        timed_out = False
        finished = False                 # the child sent "done", its last frame
        startup_s: Optional[float] = None
        try:
            proc.stdin.write((json.dumps(dict(request, mode=mode, msg_fd=self.msg_fd)) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        deadline = t0 + limits.wall_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([self.msg_r], [], [], min(left, 1.0))
            if not ready:
                if proc.poll() is not None:
                    # the child is gone; drain what is left (a grandchild may still hold the pipe: do not wait on it)
                    ready, _, _ = select.select([self.msg_r], [], [], 0.05)
                    if not ready:
                        break
                else:
                    continue
            data = os.read(self.msg_r, 1 << 20)
            if not data:
                break
            for header, payload in reader.feed(data):
                if header.get("type") == "started" and startup_s is None:
                    startup_s = time.monotonic() - t0
                if header.get("type") == "done":
                    finished = True
                reply = on_message(header, payload) if on_message else None
                if reply is not None:
                    try:
                        proc.stdin.write((json.dumps(reply) + "\n").encode())
                        proc.stdin.flush()
                    except (BrokenPipeError, OSError):
                        pass
            if reader.error or (finished and mode == "run"):
                break
        early = finished and mode == "run"
        if early:
            # A run child has nothing more to say after its last frame; its exit (a CUDA context torn down) is
            # not waited for: the group is killed now and reaped in the background. Its CPU seconds are not
            # reported (only compiles report them).
            cpu_s = None
            _kill_group_async(proc)
        else:
            if not timed_out:       # it closed the pipe; it may linger (atexit hooks, a stuck thread): killed below
                _reap(proc, max(0.1, min(5.0, deadline - time.monotonic())))
            cpu_s = _kill_group(proc)
        os.close(self.msg_r)
        # a run child that sent "done" is not waited for: no exit status (the reaper's SIGKILL is not its own end)
        outcome = SandboxOutcome(returncode=None if early else proc.returncode, timed_out=timed_out,
                                 wall_s=time.monotonic() - t0,
                                 frames=reader.frames, stderr_tail=_tail(self.err_path),
                                 stdout_tail=_tail(self.out_path, 1000), network_isolated=self.network_isolated,
                                 protocol_error=reader.error, warm_s=t0 - self.spawned_at,
                                 startup_s=startup_s, cpu_s=cpu_s)
        if self.own_dir and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return outcome


class WarmPool:
    """Sandbox processes spawned ahead of time, per kind (limits, threads, environment): each imports torch and
    blocks reading its one request, so a candidate does not wait for interpreter start-up and the torch import.

    Every process is still spawned fresh (never forked from a process that imported torch or touched CUDA), applies
    its limits before exec, serves ONE request and is killed; `acquire` hands out the oldest ready process and
    spawns its replacement at once, so `size` processes per kind stay ready. A process that died while waiting is
    discarded. Idle processes exit on their own when this process dies (their stdin closes). Thread-safe.
    """

    def __init__(self, size: int = 1, parent_dir: Optional[str] = None) -> None:
        self.size = max(0, int(size))
        self.parent_dir = parent_dir
        self._ready: dict = {}
        self._pending: dict = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _key(limits: SandboxLimits, threads: int, extra_env: Optional[dict]) -> tuple:
        return (tuple(sorted(vars(limits).items())), threads, tuple(sorted((extra_env or {}).items())))

    def acquire(self, limits: SandboxLimits, threads: int = 1, extra_env: Optional[dict] = None) -> Sandbox:
        key = self._key(limits, threads, extra_env)
        got: Optional[Sandbox] = None
        with self._lock:
            queue = self._ready.setdefault(key, [])
            while queue and got is None:
                sb = queue.pop(0)
                if sb.alive():
                    got = sb
                else:
                    sb.discard()
            if got is None:
                self.misses += 1
            else:
                self.hits += 1
            # concurrent callers must not each top the pool up: count the spawns already under way
            missing = max(0, self.size - len(queue) - self._pending.get(key, 0))
            self._pending[key] = self._pending.get(key, 0) + missing
        fresh: list = []
        try:
            if got is None:
                got = Sandbox.spawn(limits, threads, extra_env, parent_dir=self.parent_dir)
            for _ in range(missing):
                fresh.append(Sandbox.spawn(limits, threads, extra_env, parent_dir=self.parent_dir))
        finally:
            with self._lock:
                self._ready.setdefault(key, []).extend(fresh)
                self._pending[key] -= missing
        return got

    def close(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, {}
        for queue in ready.values():
            for sb in queue:
                sb.discard()


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def acquire_sandbox(limits: SandboxLimits, threads: int = 1, extra_env: Optional[dict] = None, warm: int = 0,
                    parent_dir: Optional[str] = None) -> Sandbox:
    """A sandbox for one request: from this process's WarmPool when `warm` > 0 (kept `warm` deep per kind),
    else spawned now."""
    if warm <= 0:
        return Sandbox.spawn(limits, threads, extra_env, parent_dir=parent_dir)
    with _POOLS_LOCK:
        pool = _POOLS.get((warm, parent_dir))
        if pool is None:
            pool = _POOLS[(warm, parent_dir)] = WarmPool(warm, parent_dir)
    return pool.acquire(limits, threads, extra_env)


def close_warm_pools() -> None:
    """Kill every idle pre-spawned sandbox of this process (also run at exit)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()


atexit.register(close_warm_pools)


def run_in_sandbox(mode: str, request: dict, limits: SandboxLimits, threads: int = 1,
                   on_message: Optional[Callable[[dict, Optional[bytes]], Optional[dict]]] = None,
                   workdir: Optional[str] = None, extra_env: Optional[dict] = None,
                   keep_workdir: bool = False) -> SandboxOutcome:
    """Run kernel_eval.child in `mode` with `request` in a process spawned now; `on_message(header, payload)` may
    return a reply (a dict sent as one JSON line on the child's stdin). Never raises for anything the child does."""
    return Sandbox.spawn(limits, threads, extra_env, workdir).run(mode, request, on_message, keep_workdir)


def _reap(proc: subprocess.Popen, timeout_s: float) -> Optional[float]:
    """Wait up to timeout_s for the child; when it is reaped here, return its CPU seconds (os.wait4 rusage,
    including the descendants it reaped itself, e.g. a compiler under ninja)."""
    deadline = time.monotonic() + timeout_s
    while proc.returncode is None:
        try:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:            # reaped elsewhere
            proc.poll()
            return None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            proc._sandbox_cpu_s = ru.ru_utime + ru.ru_stime
            return proc._sandbox_cpu_s
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)
    return getattr(proc, "_sandbox_cpu_s", None)


def _kill_group_async(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group now; reap it on a daemon thread."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    threading.Thread(target=_kill_group, args=(proc,), name="sandbox-reaper", daemon=True).start()


def _kill_group(proc: subprocess.Popen) -> Optional[float]:
    """SIGKILL the child's whole process group (it is a session leader), then reap it; its CPU seconds."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.stdin.close()
    except OSError:
        pass
    return _reap(proc, 10.0)
