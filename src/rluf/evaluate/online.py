"""Online evaluation: serve policies to randomised simulated users and log the traffic as production would.

    python -m rluf.evaluate.online --arm baseline --arm candidate=runs/demo/sft --users 400 --days 14 --out runs/ab

`serve_ab(arms, out_dir)` randomises the simulated users 0 .. users-1 to the arms by a seeded hash of
the user index (users ranked by the hash and dealt to the arms in turn: an equal split, at most one
user apart, that does not depend on the order of the arms' policies), serves each arm's users with
`rluf.sim.world.World.serve` (a policy directory through rluf.policy.generate.PolicyResponder, or
None for the simulator's own baseline policy) and writes what `rluf simulate` writes:

    OUT/logs/conversations.jsonl   nested conversations in the data contract; `policy` is the arm name
    OUT/truth/messages.parquet     the hidden truth per assistant message (rluf.sim.world.MESSAGE_TRUTH)
    OUT/truth/users.parquet        the hidden truth per user (rluf.sim.world.USER_TRUTH)
    OUT/truth/assignment.json      {arm: [user ids]} and the settings of the run

so `rluf ingest OUT/logs --store S` and `rluf abtest --store S` run on it unchanged (name the control
arm "baseline" or "control" for abtest to find it, or pass --control). User and conversation ids
carry `prefix` (default "ab-"), so the traffic can join an existing store without id clashes.
A model arm's users are served `batch_users` at a time: each round, every live user's pending turn is
generated in one batch (World.serve), so an arm costs a few hundred batched generations, not one
generation per reply.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson
import pyarrow.parquet as pq

from ..sim.config import WorldConfig, load_config
from ..sim.simulate import MESSAGE_SCHEMA, USER_SCHEMA, _table, _Writers
from ..sim.world import World


class OnlineEvalError(ValueError):
    pass


def assign_arms(users: int, arms: list[str], seed: int = 0, shares: dict[str, int] | None = None) -> dict[str, list[int]]:
    """{arm: sorted user indices}: users ranked by sha256(seed, index), dealt to the arms in turn.

    shares: {arm: whole number of seats per round} for an unequal split (default 1 each: equal); an arm
    not named gets 1. With shares {a: 3, b: 1} a round deals a, a, a, b: a gets three users of four.
    """
    shares = shares or {}
    unknown = sorted(set(shares) - set(arms))
    if unknown:
        raise OnlineEvalError(f"shares name arms {unknown} that are not among the arms {arms}")
    for arm, w in shares.items():
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise OnlineEvalError(f"shares[{arm!r}] = {w!r} must be a whole number >= 1 (seats per round)")
    seats = [arm for arm in arms for _ in range(shares.get(arm, 1))]
    if users < len(seats):
        raise OnlineEvalError(f"users ({users}) must be at least one round of seats ({len(seats)}: one per arm, "
                              "or as the shares say)")  # fmt: skip
    ranked = sorted(range(users), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    out: dict[str, list[int]] = {arm: [] for arm in arms}
    for k, i in enumerate(ranked):
        out[seats[k % len(seats)]].append(i)
    return {arm: sorted(v) for arm, v in out.items()}


def _check(arms, out_dir, users, days, seed, start_day, overwrite, batch_users) -> Path:
    if not isinstance(arms, dict) or len(arms) < 2:
        raise OnlineEvalError(f"arms must be a dict {{name: policy directory or None}} with at least two arms, got {arms!r}")
    for name, policy in arms.items():
        if not isinstance(name, str) or not name.strip():
            raise OnlineEvalError(f"arm name {name!r} must be a non-empty string (it becomes the logged `policy`)")
        if policy is not None and not Path(policy).is_dir():
            raise OnlineEvalError(f"arm {name}: {policy} is not a directory; pass a Hugging Face causal-LM "
                                  "directory, or None for the simulator's baseline policy")  # fmt: skip
    for what, value, low in (("users", users, 2), ("days", days, 1), ("seed", seed, 0), ("start_day", start_day, 0),
                             ("batch_users", batch_users, 1)):
        if not isinstance(value, int) or value < low:
            raise OnlineEvalError(f"{what} must be an int >= {low}, got {value!r}")
    out = Path(out_dir)
    for d in (out / "logs", out / "truth"):
        if d.exists() and any(d.iterdir()):
            if not overwrite:
                raise OnlineEvalError(f"{d} already holds files; pass overwrite=True or pick another out_dir")
            shutil.rmtree(d)
    return out


def serve_ab(arms: dict[str, str | Path | None], out_dir: str | Path, *, users: int = 200, days: int = 14,
             seed: int = 0, start_day: int = 0, prefix: str = "ab-", config: WorldConfig | None = None,
             max_new_tokens: int = 64, temperature: float = 1.0, overwrite: bool = False,
             batch_users: int = 512, workers: int = 1, threads: int | None = None,
             shares: dict[str, int] | None = None, progress=None) -> dict:  # fmt: skip
    """Serve `arms` ({name: policy directory, or None for the simulator's baseline}) to `users` simulated
    users for `days` days from `start_day`; write the logs and the truth to `out_dir`; return a summary.

    seed: the world's seed (the population and everything it does) and the assignment's hash seed.
    max_new_tokens, temperature: sampling of the model policies.
    batch_users: an arm's users are served in groups of this many, live at once, their pending turns
    generated as one batch (World.serve's batch_users); 1 answers one turn at a time. Larger groups
    decode faster (the policy sorts each round's contexts by length into decoding batches of its own
    size, which do not grow with the group): `python -m bench serve --per-call 512` gives about twice the
    replies/s of `--per-call 128`.
    shares: {arm: seats per round} for an unequal split (assign_arms); the summary's `expected_split`
    is what `rluf abtest` needs for its sample-ratio test.
    progress: called as progress(groups done, groups) after each group is written.
    workers: processes serving the groups in parallel; threads: torch threads per process (default:
    the cores shared out). The groups and their order do not depend on `workers`: the output is the
    same for any number of them.
    """
    out = _check(arms, out_dir, users, days, seed, start_day, overwrite, batch_users)
    if not isinstance(workers, int) or workers < 1:
        raise OnlineEvalError(f"workers must be an int >= 1, got {workers!r}")
    for name, policy_dir in arms.items():  # fail before any serving when a directory is not a model
        if policy_dir is not None and not (Path(policy_dir) / "config.json").is_file():
            raise OnlineEvalError(f"arm {name}: {policy_dir} has no config.json; it is not a Hugging Face causal-LM "
                                  "directory (rluf sft and rluf optimize write one)")  # fmt: skip
    t0 = time.perf_counter()
    world = World(config, seed)
    assignment = assign_arms(users, list(arms), seed, shares)
    logs_dir, truth_dir, parts = out / "logs", out / "truth", out / "_parts"
    shutil.rmtree(parts, ignore_errors=True)
    for d in (logs_dir, truth_dir, parts):
        d.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    jobs = []
    for k, (name, policy_dir) in enumerate(arms.items()):
        group = batch_users if policy_dir is not None else len(assignment[name])
        for g in range(0, len(assignment[name]), group):
            jobs.append({"name": name, "policy": None if policy_dir is None else str(policy_dir),
                         "users": assignment[name][g: g + group], "part": str(parts / f"arm-{k:03d}-{g:07d}"),
                         "config": world.config, "seed": seed, "intercepts": world.intercepts, "days": days,
                         "start_day": start_day, "prefix": prefix, "max_new_tokens": max_new_tokens,
                         "temperature": temperature, "batch_users": batch_users, "threads": threads})  # fmt: skip
    writers = _Writers(logs_dir / "conversations.jsonl", truth_dir, "jsonl")
    per_arm = {name: {"policy": None if d is None else str(d), "assigned_users": len(assignment[name]),
                      "active_users": 0, "conversations": 0, "assistant_messages": 0} for name, d in arms.items()}  # fmt: skip
    try:
        if workers == 1:
            results = map(_serve_group, jobs)
        else:
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            results = pool.map(_serve_group, jobs)
        for done, (job, counts) in enumerate(zip(jobs, results), start=1):
            writers.append(Path(job["part"]))
            for key, n in counts.items():
                per_arm[job["name"]][key] += n
            if progress is not None:
                progress(done, len(jobs))
    except ValueError as exc:
        raise OnlineEvalError(str(exc)) from None
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
        writers.close()
        shutil.rmtree(parts, ignore_errors=True)
    user_ids = {name: [world.user(i, prefix=prefix).user_id for i in assignment[name]] for name in arms}
    summary = {"out": str(out), "logs": str(logs_dir / "conversations.jsonl"), "truth": str(truth_dir),
               "users": users, "days": days, "seed": seed, "start_day": start_day, "prefix": prefix,
               "intercepts": list(world.intercepts), "arms": per_arm, "workers": workers,
               "expected_split": {arm: (shares or {}).get(arm, 1) for arm in arms}}  # fmt: skip
    (truth_dir / "assignment.json").write_text(json.dumps({**summary, "assignment": user_ids}, indent=1) + "\n")
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


_POLICIES: dict = {}  # policy directory -> PolicyResponder, per process


def _serve_group(job: dict) -> dict:
    """Serve one group of an arm's users; write its part (logs, truth); return its counts."""
    import torch

    from ..policy.generate import PolicyResponder

    torch.set_num_threads(job["threads"])
    policy = None
    if job["policy"] is not None:
        key = (job["policy"], job["max_new_tokens"], job["temperature"])
        if key not in _POLICIES:
            try:
                _POLICIES[key] = PolicyResponder(job["policy"], max_new_tokens=job["max_new_tokens"],
                                                 temperature=job["temperature"], batch_size=64)  # fmt: skip
            except ValueError as exc:
                raise ValueError(f"arm {job['name']}: {exc}") from None
        policy = _POLICIES[key]
    world = World(job["config"], job["seed"], intercepts=job["intercepts"])
    records, messages, truth_users = [], [], []
    for log in world.serve(policy, users=job["users"], days=job["days"], start_day=job["start_day"],
                           policy_name=job["name"], prefix=job["prefix"], batch_users=job["batch_users"]):  # fmt: skip
        records.extend(log.records)
        messages.extend(log.messages)
        truth_users.append(log.user)
    part = Path(job["part"])
    part.mkdir()
    (part / "logs.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    pq.write_table(_table(messages, MESSAGE_SCHEMA), part / "messages.parquet")
    pq.write_table(_table(truth_users, USER_SCHEMA), part / "users.parquet")
    return {"active_users": len(truth_users), "conversations": len(records), "assistant_messages": len(messages)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rluf evaluate online", description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", required=True, metavar="NAME[=DIR]",
                   help="an arm: NAME=policy directory, or NAME alone for the simulator's baseline (repeat)")
    p.add_argument("--out", required=True, help="output directory (logs/ and truth/)")
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-day", type=int, default=0, help="day offset from the world's start date")
    p.add_argument("--prefix", default="ab-", help="prepended to user and conversation ids")
    p.add_argument("--config", help="world YAML (default: the built-in world)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-users", type=int, default=512, help="users of a model arm served at once (one generation batch)")
    p.add_argument("--share", action="append", default=[], metavar="NAME=SEATS",
                   help="an unequal split: NAME gets SEATS users per round, others 1 (repeat)")
    p.add_argument("--workers", type=int, default=1, help="processes serving user groups in parallel (same output for any number)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    arms = {}
    for spec in a.arm:
        name, sep, path = spec.partition("=")
        if name in arms:
            print(f"error: --arm {name!r} is given twice; arm names must be unique", file=sys.stderr)
            return 2
        arms[name] = path if sep else None
    shares = {}
    for spec in a.share:
        name, sep, seats = spec.partition("=")
        if not sep or not seats.isdigit():
            print(f"error: --share {spec!r}: expected NAME=SEATS with a whole number, e.g. --share baseline=3", file=sys.stderr)
            return 2
        shares[name] = int(seats)
    try:
        config = load_config(a.config) if a.config else None
        summary = serve_ab(arms, a.out, users=a.users, days=a.days, seed=a.seed, start_day=a.start_day, prefix=a.prefix,
                           config=config, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                           overwrite=a.overwrite, batch_users=a.batch_users, workers=a.workers,
                           shares=shares or None)  # fmt: skip
    except (OnlineEvalError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
