"""Run ``python -m <module> <args>`` commands one after another in this one interpreter.

``python tests/command_runner.py PLAN.json RESULTS.jsonl``: PLAN is a list of
``{"argv": [module, *args], "env": {...}, "log": path}``; each command runs as ``python -m``
would run it (``runpy`` with ``__main__``, ``sys.argv`` set), its stdout and stderr (file
descriptors 1 and 2, so child processes' output too) go to its log, and one JSON line per
command (``argv``, ``exit``, ``seconds``) is appended to RESULTS as soon as it ends.

Used by ``tests/test_documented_commands.py``: one interpreter pays the ~6 s import of torch
and Lightning once instead of once per documented command. An argument ``<dir>/<time>`` is
replaced, when its command starts, by the newest entry of ``<dir>`` (what a user copies from
the previous command's output).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import sys
import time
import traceback
from pathlib import Path


def fill_time(arg: str) -> str:
    """``outputs/x/multiruns/<time>`` -> the newest ``outputs/x/multiruns/*`` (as given if none)."""
    match = re.fullmatch(r"(.*)/<time>", arg)
    if not match:
        return arg
    found = sorted(Path(match.group(1)).glob("*"), key=lambda p: p.stat().st_mtime)
    return str(found[-1]) if found else arg


def run_one(argv: list[str], env: dict[str, str], log: Path) -> int:
    """Run ``python -m argv[0] argv[1:]`` here with ``env`` added; return its exit status."""
    saved_env, saved_path = dict(os.environ), list(sys.path)
    os.environ.update(env)
    out, err = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            sys.argv = [argv[0], *(fill_time(a) for a in argv[1:])]
            runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)  # as the interpreter prints SystemExit("...")
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.close(out)
            os.close(err)
    os.environ.clear()
    os.environ.update(saved_env)
    sys.path[:] = saved_path
    return code


def run_plan(commands: list[dict], workdir: Path, cwd: Path, env: dict[str, str],
             timeout: float = 900) -> list[dict]:
    """Run ``commands`` (``{"argv": [module, *args], "env": {...}}``) with this runner in one new
    interpreter started in ``cwd`` with ``env``; each result is ``{"argv", "exit", "seconds",
    "log"}``, ``log`` its stdout and stderr. ``workdir`` holds the plan, results and logs."""
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    plan = [{**c, "log": str(workdir / f"command_{i:02d}.log")} for i, c in enumerate(commands)]
    (workdir / "plan.json").write_text(json.dumps(plan))
    results = workdir / "results.jsonl"
    results.unlink(missing_ok=True)
    subprocess.run([sys.executable, __file__, str(workdir / "plan.json"), str(results)],
                   cwd=cwd, env=env, check=True, timeout=timeout)
    done = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(done) == len(plan), f"the runner stopped after {len(done)} of {len(plan)}"
    return [{**r, "log": Path(c["log"]).read_text()} for r, c in zip(done, plan, strict=True)]


def main(plan_file: str, results_file: str) -> None:
    for command in json.loads(Path(plan_file).read_text()):
        start = time.monotonic()
        code = run_one(command["argv"], command.get("env", {}), Path(command["log"]))
        with open(results_file, "a") as f:
            f.write(json.dumps({"argv": command["argv"], "exit": code,
                                "seconds": round(time.monotonic() - start, 1)}) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
