"""The reward-model server: score (context, response) pairs over HTTP, including OpenRLHF's remote RM protocol.

    python -m rluf.reward.serve --model love=runs/rm/love --port 8000

Endpoints (docs/serving.md has request and response examples):

- `GET /health`: liveness, {"status": "ok"}.
- `GET /ready`: the loaded models with their kind, signal and context_turns.
- `POST /score`: {"model": name (omitted: every model), "items": [{"context": str | [turns], "response": str}],
  "output": "prob" | "logit"} -> {"scores": {name: [float, ...]}}. A string context is one user turn;
  turns are {"role", "text"} or {"role", "content"} (the chat format).
- `POST /get_reward`: OpenRLHF's remote reward model protocol (`--remote_rm_url http://HOST:PORT/get_reward`):
  {"query": [prompt + response], "prompts": [prompt], "labels": [...]} -> {"rewards": [...], "scores": [...]}.
  The response is the text of query[i] after prompts[i], with trailing end-of-sequence markers removed;
  the prompt becomes the context, split into turns when it is in the ChatML, Llama 3 or Gemma chat
  template and one user turn otherwise. `labels` and any other field are accepted and ignored. The
  model is `?model=NAME` (default: the first one loaded); `?output=logit` gives log-odds.

Limits: `max_batch` items per /score request (413 above it), `max_reward_batch` queries per /get_reward
request (scored in chunks of `max_batch`), `max_text_chars` characters for a response and for each
context turn (413), at most MAX_TURNS turns per context (413). Bad input is a 422 whose `detail`
lists each error with its `field` path (e.g. `items[0].response`); an unknown model is a 404.

Each model runs in its own thread behind a queue: requests are validated on the event loop, scored
off it, and requests that arrive while a model is busy are scored together in one call (up to
`max_batch` items), so concurrent small requests share the model's batching.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .base import RewardModel, RewardModelError
from .text import render_context

MAX_TURNS = 2000  # turns per context, as in the data contract
ENV_CONFIG = "RLUF_SERVE_CONFIG"  # how `serve(workers > 1)` hands its settings to each worker process
EOS_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>", "<eos>")
# Chat templates whose rendered prompts are split back into turns: (turn pattern, role renames).
TEMPLATES = (
    (re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>|\Z)", re.S), {}),  # ChatML (Qwen, ...)
    (re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|\Z)", re.S), {}),  # Llama 3
    (re.compile(r"<start_of_turn>(\w+)\n(.*?)(?:<end_of_turn>|\Z)", re.S), {"model": "assistant"}),  # Gemma
)


# ------------------------------------------------------------------ request and response bodies


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(min_length=1)
    text: str | None = None
    content: str | None = None

    @model_validator(mode="after")
    def _one_text(self) -> "Turn":
        if (self.text is None) == (self.content is None):
            raise ValueError("a turn needs exactly one of 'text' or 'content' (a string)")
        return self

    def as_dict(self) -> dict:
        return {"role": self.role, "text": self.text if self.text is not None else self.content}


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: str | list[Turn]  # a string is one user turn (even ""); [] for no context
    response: str


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None  # omitted: every loaded model
    items: list[Item]
    output: Literal["prob", "logit"] = "prob"


class ScoreResponse(BaseModel):
    scores: dict[str, list[float]]


class RewardRequest(BaseModel):
    """OpenRLHF's remote reward request; extra fields (labels, templates, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    query: list[str]
    prompts: list[str]
    labels: list[Any] | None = None

    @field_validator("prompts")
    @classmethod
    def _pairs(cls, prompts: list[str], info: ValidationInfo) -> list[str]:
        query = info.data.get("query")
        if query is not None and len(prompts) != len(query):
            raise ValueError(f"{len(query)} queries but {len(prompts)} prompts; give one prompt per query")
        return prompts


class RewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]


# ------------------------------------------------------------------ model workers


@dataclass
class _Job:
    contexts: list[list[dict]]
    responses: list[str]
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class ModelWorker:
    """One model in one thread: takes jobs off a queue, scores every queued job in one call (up to
    `max_items` items) and resolves each job's future with its calibrated log-odds."""

    def __init__(self, name: str, model: RewardModel, max_items: int):
        self.name, self.model, self.max_items = name, model, max_items
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name=f"rluf-rm-{name}", daemon=True)
        self.thread.start()

    def submit(self, contexts: list[list[dict]], responses: list[str]) -> concurrent.futures.Future:
        job = _Job(contexts, responses)
        self.queue.put(job)
        return job.future

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            jobs, n = [job], len(job.responses)
            while n < self.max_items:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # stop after this batch
                    break
                jobs.append(nxt)
                n += len(nxt.responses)
            self._run(jobs)

    def _logits(self, jobs: list[_Job]) -> np.ndarray:
        k = self.model.context_turns
        contexts = [render_context(t, k) for j in jobs for t in j.contexts]
        return self.model.predict_logit(contexts, [r for j in jobs for r in j.responses])

    def _run(self, jobs: list[_Job]) -> None:
        try:
            z = self._logits(jobs)
        except Exception as exc:  # noqa: BLE001  (score each job alone so that one bad job fails alone)
            if len(jobs) > 1:
                for j in jobs:
                    self._run([j])
                return
            jobs[0].future.set_exception(
                HTTPException(500, f"model {self.name!r} failed to score the request: {type(exc).__name__}: {exc}"))
            return
        start = 0
        for j in jobs:
            j.future.set_result(z[start:start + len(j.responses)])
            start += len(j.responses)


# ------------------------------------------------------------------ app


def create_app(models: dict[str, Path], max_batch: int = 256, max_text_chars: int = 20000,
               max_reward_batch: int = 8192) -> FastAPI:  # fmt: skip
    """A FastAPI app serving the reward models in `models` (name -> model directory), loaded now.

    Raises RewardModelError for a directory that is not a reward model and ValueError for bad limits.
    """
    if not models:
        raise ValueError("no reward model to serve; give at least one name=DIR")
    for label, v in (("max_batch", max_batch), ("max_text_chars", max_text_chars), ("max_reward_batch", max_reward_batch)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{label} must be a positive integer, got {v!r}")
    loaded = {name: RewardModel.load(d) for name, d in models.items()}
    for name, m in loaded.items():  # a model that cannot score fails the start, not the first request
        m.predict_logit([""], [""])
    workers = {name: ModelWorker(name, m, max_batch) for name, m in loaded.items()}
    default = next(iter(loaded))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        for w in workers.values():
            w.stop()

    app = FastAPI(title="rluf reward models", lifespan=lifespan)
    app.state.workers = workers

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": "(body)" if e["type"] == "json_invalid" else _field_path(e["loc"]),
                   "msg": e["msg"] + (f" at character {e['loc'][-1]}" if e["type"] == "json_invalid" else ""),
                   "type": e["type"]} for e in exc.errors()]  # fmt: skip
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> dict:
        alive = all(w.thread.is_alive() for w in workers.values())
        body = {"ready": alive, "default_model": default, "limits": {"max_batch": max_batch,
                "max_text_chars": max_text_chars, "max_reward_batch": max_reward_batch, "max_turns": MAX_TURNS},
                "models": [{"name": n, "kind": m.kind, "signal": m.signal, "context_turns": m.context_turns,
                            "dir": str(models[n])} for n, m in loaded.items()]}  # fmt: skip
        return body if alive else JSONResponse(body, status_code=503)

    def pick(name: str | None) -> list[str]:
        if name is None:
            return list(workers)
        if name not in workers:
            raise HTTPException(404, f"unknown model {name!r}; loaded: {sorted(workers)}")
        return [name]

    def check_text(text: str, where: str) -> None:
        if len(text) > max_text_chars:
            raise HTTPException(413, f"{where} has {len(text)} characters; the limit is {max_text_chars} (--max-text-chars)")

    async def logits(names: list[str], contexts: list[list[dict]], responses: list[str]) -> dict[str, np.ndarray]:
        futures = [asyncio.wrap_future(workers[n].submit(contexts, responses)) for n in names]
        return dict(zip(names, await asyncio.gather(*futures)))

    @app.post("/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest) -> dict:
        names = pick(req.model)
        if len(req.items) > max_batch:
            raise HTTPException(413, f"{len(req.items)} items in one request; the limit is {max_batch} (--max-batch)")
        contexts = []
        for i, it in enumerate(req.items):
            check_text(it.response, f"items[{i}].response")
            if isinstance(it.context, str):
                turns = [{"role": "user", "text": it.context}]
            else:
                turns = [t.as_dict() for t in it.context]
            if len(turns) > MAX_TURNS:
                raise HTTPException(413, f"items[{i}].context has {len(turns)} turns; the limit is {MAX_TURNS}")
            for j, t in enumerate(turns):
                check_text(t["text"], f"items[{i}].context" + ("" if isinstance(it.context, str) else f"[{j}]"))
            contexts.append(turns)
        z = await logits(names, contexts, [it.response for it in req.items])
        return {"scores": {n: _output(v, req.output).tolist() for n, v in z.items()}}

    def split_queries(req: RewardRequest) -> tuple[list[list[dict]], list[str]]:
        """The (context turns, response) of every query, or an HTTP error naming the query at fault."""
        contexts, responses = [], []
        for i, (q, p) in enumerate(zip(req.query, req.prompts)):
            response = split_response(q, p)
            if response is None:
                raise HTTPException(422, [{"field": f"query[{i}]", "type": "value_error",
                                           "msg": f"prompts[{i}] is not part of query[{i}]; the response is the text "
                                                  "of the query after its prompt"}])  # fmt: skip
            check_text(response, f"the response of query[{i}]")
            turns = prompt_turns(p)
            if len(turns) > MAX_TURNS:
                raise HTTPException(413, f"prompts[{i}] has {len(turns)} turns; the limit is {MAX_TURNS}")
            for j, t in enumerate(turns):
                check_text(t["text"], f"prompts[{i}] turn {j}")
            contexts.append(turns)
            responses.append(response)
        return contexts, responses

    @app.post("/get_reward", response_model=RewardResponse)
    async def get_reward(req: RewardRequest, model: str | None = None,
                         output: Literal["prob", "logit"] = Query("prob")) -> dict:  # fmt: skip
        name = pick(model or default)[0]
        if len(req.query) > max_reward_batch:
            raise HTTPException(413, f"{len(req.query)} queries in one request; the limit is {max_reward_batch} "
                                     "(--max-reward-batch)")  # fmt: skip
        contexts, responses = await run_in_threadpool(split_queries, req)  # large batches: off the event loop
        parts = [logits([name], contexts[s:s + max_batch], responses[s:s + max_batch])
                 for s in range(0, len(responses), max_batch)]  # fmt: skip
        z = np.concatenate([r[name] for r in await asyncio.gather(*parts)]) if parts else np.zeros(0)
        values = _output(z, output).tolist()
        return {"rewards": values, "scores": values}

    return app


def _output(z: np.ndarray, output: str) -> np.ndarray:
    """Calibrated log-odds as asked: "logit" as they are, "prob" through the sigmoid (as predict_proba)."""
    z = np.asarray(z, dtype=np.float64)
    return z if output == "logit" else 1.0 / (1.0 + np.exp(-z))


def _field_path(loc) -> str:
    """("body", "items", 0, "response") -> "items[0].response" (pydantic's union branch labels left out)."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path") else loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" not in part and part not in ("str", "int", "float", "bool"):
            out += ("." if out else "") + part
    return out or "(body)"


def split_response(query: str, prompt: str) -> str | None:
    """The response in an OpenRLHF query: the text after the prompt, trailing end-of-sequence markers
    and whitespace removed; None when the prompt is not in the query."""
    if query.startswith(prompt):
        rest = query[len(prompt):]
    else:
        at = query.find(prompt) if prompt else 0
        if at < 0:
            return None
        rest = query[at + len(prompt):]
    changed = True
    while changed:
        changed = False
        rest = rest.rstrip()
        for marker in EOS_MARKERS:
            if rest.endswith(marker):
                rest, changed = rest[: -len(marker)], True
    return rest.strip()


def prompt_turns(prompt: str) -> list[dict]:
    """A rendered chat prompt split back into turns (ChatML, Llama 3, Gemma); otherwise one user turn.
    The open assistant turn a generation prompt ends with is dropped."""
    for pattern, renames in TEMPLATES:
        found = pattern.findall(prompt)
        if found:
            turns = [{"role": renames.get(role, role), "text": text.strip()} for role, text in found]
            if turns and turns[-1]["role"] == "assistant" and not turns[-1]["text"]:
                turns.pop()
            return turns
    return [{"role": "user", "text": prompt}]


# ------------------------------------------------------------------ running it


def parse_models(specs: list[str]) -> dict[str, Path]:
    """["love=runs/rm/love", "runs/rm/up"] -> {"love": ..., "up": ...} (a bare directory is named after itself)."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).resolve().name, spec
        if not name or not re.fullmatch(r"[\w.\-]+", name):
            raise ValueError(f"model name {name!r} in {spec!r}: use letters, digits, '_', '-' or '.' (NAME=DIR)")
        if name in out:
            raise ValueError(f"model name {name!r} given twice; name them apart with NAME=DIR")
        out[name] = Path(path)
    return out


def app_from_env() -> FastAPI:
    """The app a uvicorn worker process builds from the settings `serve` left in $RLUF_SERVE_CONFIG."""
    cfg = json.loads(os.environ[ENV_CONFIG])
    return create_app({n: Path(p) for n, p in cfg.pop("models").items()}, **cfg)


def serve(models: dict[str, Path], host: str = "127.0.0.1", port: int = 8000, workers: int = 1, max_batch: int = 256,
          max_text_chars: int = 20000, max_reward_batch: int = 8192, log_level: str = "info") -> None:  # fmt: skip
    """Serve the models with uvicorn until interrupted; `workers` processes each load every model."""
    import uvicorn

    limits = {"max_batch": max_batch, "max_text_chars": max_text_chars, "max_reward_batch": max_reward_batch}
    if workers == 1:
        uvicorn.run(create_app(models, **limits), host=host, port=port, log_level=log_level)
        return
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    for name, d in models.items():  # fail here, once, rather than in every worker
        RewardModel.load(d)
    os.environ[ENV_CONFIG] = json.dumps({"models": {n: str(Path(p).resolve()) for n, p in models.items()}, **limits})
    uvicorn.run("rluf.reward.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rluf.reward.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model", action="append", required=True, help="NAME=DIR (or DIR) of a reward model; repeatable")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1, help="server processes, each with every model loaded")
    ap.add_argument("--max-batch", type=int, default=256, help="items per /score request")
    ap.add_argument("--max-text-chars", type=int, default=20000, help="characters per response or context turn")
    ap.add_argument("--max-reward-batch", type=int, default=8192, help="queries per /get_reward request")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    try:
        models = parse_models(args.model)
        serve(models, args.host, args.port, args.workers, args.max_batch, args.max_text_chars, args.max_reward_batch,
              args.log_level)  # fmt: skip
    except (ValueError, RewardModelError) as exc:
        ap.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    main()
