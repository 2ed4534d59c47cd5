#!/usr/bin/env python3
"""Fake ``docker``, ``srun`` and ``sbatch`` for the launcher tests (stdlib only).

``docker``, ``srun`` and ``sbatch`` in this directory are links to this file; it acts
by the name it was called as.  Each call appends one JSON line to
``$FAKE_CLUSTER_LOG`` (if set) describing what it was asked to do, then runs the
worker command locally:

``docker run --rm --name NAME [--network host] [-e VAR[=VALUE]]... [--gpus device=ID]
[-v A:B]... IMAGE CMD...``
    runs ``CMD`` with the environment a container would get: only the ``-e``
    variables, plus ``PATH``/``HOME``/``PYTHONPATH`` (standing in for the image's
    installed package).  A second container with the same name while the first runs
    fails like docker does (exit 125).  Exit status: the command's, or 128 + signal.
``docker rm -f NAME``
    records the sweep; kills the named fake container if it still runs.
``srun [--job-name NAME] [--export=ALL] [--opt=value]... CMD...``
    runs ``CMD`` with the caller's environment.
``sbatch --wait [--job-name NAME] [--export=ALL] [--opt=value]... --wrap "CMD"``
    runs ``CMD`` through ``sh -c`` and waits.

Anything else exits 2 with a message, so an unexpected launcher command fails loudly.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TOOL = Path(sys.argv[0]).name
ARGS = sys.argv[1:]
STATE = Path(os.environ.get("FAKE_CLUSTER_STATE", "/tmp/fake-cluster-state"))


def record(entry):
    log = os.environ.get("FAKE_CLUSTER_LOG")
    if not log:
        return
    entry = dict(entry, tool=TOOL, pid=os.getpid(), t=time.time())
    with open(log, "a") as f:
        f.write(json.dumps(entry) + "\n")


def fail(message, code=2):
    print(f"fake {TOOL}: {message}", file=sys.stderr)
    record({"op": "error", "argv": ARGS, "message": message})
    sys.exit(code)


def run_child(cmd, env, name=None):
    proc = subprocess.Popen(cmd, env=env)
    if name:
        (STATE / f"{name}.pid").write_text(str(proc.pid))

    def forward(signum, frame):
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = proc.wait()
    if name:
        (STATE / f"{name}.pid").unlink(missing_ok=True)
    return 128 - code if code < 0 else code


def docker_run(args):
    opts = {"name": None, "env": [], "gpus": None, "rm": False, "network": None, "volumes": []}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        if a == "--rm":
            opts["rm"] = True
        elif a in ("--name", "--network", "-e", "--env", "--gpus", "-v", "--volume", "--user", "-u", "-w", "--workdir"):
            if i + 1 >= len(args):
                fail(f"option {a} needs a value")
            value = args[i + 1]
            key = {"--name": "name", "--network": "network", "--gpus": "gpus"}.get(a)
            if key:
                opts[key] = value
            elif a in ("-e", "--env"):
                opts["env"].append(value)
            elif a in ("-v", "--volume"):
                opts["volumes"].append(value)
            i += 1
        else:
            fail(f"unknown docker run option {a}")
        i += 1
    if i >= len(args):
        fail("docker run needs an image")
    image, cmd = args[i], args[i + 1 :]
    if not cmd:
        fail("no command after the image")
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH", "LANG", "TMPDIR") if k in os.environ}
    passed = []
    for item in opts["env"]:
        name, eq, value = item.partition("=")
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
        passed.append(name)
    gpu = None
    if opts["gpus"] is not None:
        if not opts["gpus"].startswith("device="):
            fail(f"--gpus {opts['gpus']}: expected device=ID")
        gpu = opts["gpus"].split("=", 1)[1]
    STATE.mkdir(parents=True, exist_ok=True)
    name = opts["name"]
    if name:
        pidfile = STATE / f"{name}.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), 0)
                fail(f'Conflict. The container name "/{name}" is already in use', 125)
            except (ProcessLookupError, ValueError):
                pidfile.unlink(missing_ok=True)
    record({"op": "run", "name": name, "image": image, "gpu": gpu, "env": passed, "rm": opts["rm"],
            "network": opts["network"], "cmd": cmd, "has_context": "DAISY_CONTEXT" in env})
    code = run_child(cmd, env, name)
    record({"op": "exit", "name": name, "gpu": gpu, "code": code})
    return code


def docker(args):
    if args[:1] == ["run"]:
        return docker_run(args[1:])
    if args[:2] == ["rm", "-f"] and len(args) == 3:
        name = args[2]
        pidfile = STATE / f"{name}.pid"
        was_running = False
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
                was_running = True
            except (ProcessLookupError, ValueError):
                pass
            pidfile.unlink(missing_ok=True)
        record({"op": "rm", "name": name, "was_running": was_running})
        if not was_running:
            print(f"Error response from daemon: No such container: {name}", file=sys.stderr)
            return 1
        return 0
    fail(f"unsupported docker command: {args}")


def slurm_options(args, value_opts=("--job-name", "-J", "-p", "--partition")):
    opts, i = {}, 0
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        if a in value_opts:
            opts[a.lstrip("-")] = args[i + 1]
            i += 2
            continue
        if a == "--wrap":
            break
        key, _, value = a.lstrip("-").partition("=")
        opts[key] = value or True
        i += 1
    return opts, args[i:]


def srun(args):
    opts, cmd = slurm_options(args)
    if not cmd:
        fail("srun needs a command")
    record({"op": "srun", "job_name": opts.get("job-name") or opts.get("J"), "options": opts, "cmd": cmd,
            "has_context": "DAISY_CONTEXT" in os.environ})
    code = run_child(cmd, dict(os.environ))
    record({"op": "exit", "job_name": opts.get("job-name"), "code": code})
    return code


def sbatch(args):
    opts, rest = slurm_options(args)
    if rest[:1] != ["--wrap"] or len(rest) != 2:
        fail(f"expected --wrap CMD at the end, got {rest}")
    if opts.get("wait") is not True:
        fail("the launcher must pass --wait (it blocks until the job ends)")
    record({"op": "sbatch", "job_name": opts.get("job-name") or opts.get("J"), "options": opts, "wrap": rest[1],
            "has_context": "DAISY_CONTEXT" in os.environ})
    print("Submitted batch job 4242", flush=True)
    code = run_child(["sh", "-c", rest[1]], dict(os.environ))
    record({"op": "exit", "job_name": opts.get("job-name"), "code": code})
    return code


if __name__ == "__main__":
    handler = {"docker": docker, "srun": srun, "sbatch": sbatch}.get(TOOL)
    if handler is None:
        fail(f"called as {TOOL!r}; expected docker, srun or sbatch")
    sys.exit(handler(ARGS))
