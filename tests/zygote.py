"""A "zygote" for fault-injection tests: a process that imports JAX, torch and jtts once, then forks one child
per command. Each child is a real process running `jtts.cli.main(argv)` with its own stdout/stderr files; it
can be killed with SIGKILL at its k-th file-system change (an audit hook numbers every open for writing,
rename, removal and mkdir: the points where the on-disk state changes, the same from run to run) or by the
zygote after a delay, and given an RLIMIT_FSIZE. Forking saves the 3-4 s of imports that each
`python -m jtts` would cost.

    z = Zygote(folder, env)
    [res] = z.run({"argv": ["convert", "a.pt", "-o", "m"], "kill_at": 7})
    res["killed"], res["rc"], res["stderr"], res["events"]   # events: "7 os.rename /path/..." lines
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

MUTATIONS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate", "os.link",
             "os.symlink"}


def _zygote_main() -> None:
    import jax  # noqa: F401  everything a command imports, once: children start warm
    import flax.nnx  # noqa: F401
    import orbax.checkpoint  # noqa: F401
    import soundfile  # noqa: F401
    import torch  # noqa: F401

    import jtts.cli  # noqa: F401
    import jtts.convert.torch_io  # noqa: F401
    import jtts.denoiser  # noqa: F401
    import jtts.hub  # noqa: F401
    import jtts.pipeline  # noqa: F401
    import jtts.tacotron2  # noqa: F401
    import jtts.waveglow  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        results = _run_jobs(json.loads(line))
        print(json.dumps(results), flush=True)


def _run_jobs(jobs: list[dict], parallel: int = 2) -> list[dict]:
    pending, running, results = list(enumerate(jobs)), {}, [None] * len(jobs)
    while pending or running:
        while pending and len(running) < parallel:
            i, job = pending.pop(0)
            running[_spawn(job)] = [i, job, time.monotonic(), False]
        now = time.monotonic()
        for pid, entry in running.items():
            after = entry[1].get("kill_after")
            if after is not None and not entry[3] and now - entry[2] >= after:
                os.kill(pid, signal.SIGKILL)
                entry[3] = True
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.005)
            continue
        i, job, t0, _ = running.pop(pid)
        results[i] = {"killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
                      "rc": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                      "seconds": time.monotonic() - t0}
    return results


def _spawn(job: dict) -> int:
    # created before the fork: a child killed by a delay before it opened them still leaves them to read
    for name in ("stdout", "stderr", "events"):
        open(job[name], "wb").close()
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(job[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.environ.update(job.get("env", {}))
        if job.get("fsize"):
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (job["fsize"], job["fsize"]))
        _count_mutations(os.open(job["events"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), job.get("kill_at"))
        from jtts.cli import main

        code = main(job["argv"])
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _count_mutations(log_fd: int, kill_at: int | None) -> None:
    """Number every file-system change the command makes (logged to log_fd); SIGKILL at number kill_at."""
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    count = 0

    def hook(event, args):
        nonlocal count
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int) or not ((mode and set(mode) & set("wax+")) or (mode is None and flags & writing)):
                return
        elif event not in MUTATIONS:
            return
        count += 1
        try:
            os.write(log_fd, f"{count} {event} {args[0]}\n".encode())
        except OSError:  # RLIMIT_FSIZE reached by the log itself: never the command's problem
            pass
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)


class Zygote:
    """The test side: start the zygote once, hand it batches of jobs, read their results back."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.n = folder, 0
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=folder)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, *jobs: dict) -> list[dict]:
        """jobs: {"argv", optional "kill_at" (k-th change), "kill_after" (s), "fsize" (bytes), "env"}; -> each
        job's {"killed", "rc", "seconds", "stderr", "events"} in order."""
        for job in jobs:
            self.n += 1
            job.update({k: str(self.folder / f"{self.n}.{k}") for k in ("stdout", "stderr", "events")})
        self.proc.stdin.write(json.dumps(list(jobs)) + "\n")
        self.proc.stdin.flush()
        results = json.loads(self.proc.stdout.readline())
        for job, res in zip(jobs, results):
            res["stderr"] = Path(job["stderr"]).read_text()
            res["events"] = Path(job["events"]).read_text().splitlines()
        return results

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    _zygote_main()
