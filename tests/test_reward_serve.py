"""`rluf.reward.serve`: the reward-model HTTP server, in process (FastAPI TestClient) and over loopback.

Covers: /health and /ready; /score for every model or one, as probabilities or log-odds, equal to
the models' own predict_proba / predict_logit on the rendered contexts; every error code (422 with
the field path, 413 for batches, texts and turns over the limits, 404 for an unknown model, 500
when a model fails); the OpenRLHF /get_reward round trip (response = query after prompt, chat
templates split back into turns, chunking over max_batch); concurrent requests scored together and
each answered with its own scores; the model-spec parser; and a 3-second real load test on
loopback through `python -m bench loadtest` with 4 clients and zero errors.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from rluf.reward.base import LengthRewardModel, RewardModel, RewardModelError
from rluf.reward.serve import create_app, parse_models, prompt_turns, split_response
from rluf.reward.text import as_turns, render_context

ROOT = Path(__file__).resolve().parents[1]
RESPONSES = ["a", "a b c d e f", "b", "c d e f g h i", "x y", "one two three four five six seven eight"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    LengthRewardModel(context_turns=2).fit([""] * 6, RESPONSES, [0, 1, 0, 1, 0, 1]).save(d / "love")
    LengthRewardModel(signal="thumbs_up", context_turns=0).fit([""] * 6, RESPONSES, [1, 0, 1, 1, 0, 0]).save(d / "up")
    return {"love": d / "love", "up": d / "up"}


@pytest.fixture(scope="module")
def client(models):
    with TestClient(create_app(models, max_batch=4, max_text_chars=50, max_reward_batch=6)) as c:
        yield c


class Probe:
    """A stand-in model: its log-odds encode the exact context and response; it records its calls."""

    kind, signal = "probe", "love"

    def __init__(self, k: int, delay: float = 0.0):
        self.context_turns, self.delay = k, delay
        self.calls: list[int] = []

    @staticmethod
    def f(context: str, response: str) -> float:
        return len(context) + len(response) / 1000

    def predict_logit(self, contexts, responses):
        if "boom" in responses:
            raise RuntimeError("cannot score 'boom'")
        self.calls.append(len(responses))
        time.sleep(self.delay)
        return np.array([self.f(c, r) for c, r in zip(contexts, responses)])


@pytest.fixture
def probes(monkeypatch) -> dict[str, Probe]:
    """Directories named probe<k> load as a Probe with context_turns k (and a 20 ms delay per call)."""
    made: dict[str, Probe] = {}

    def load(directory):
        name = Path(directory).name
        made[name] = Probe(int(name[5:]), delay=0.02)
        return made[name]

    monkeypatch.setattr(RewardModel, "load", staticmethod(load))
    return made


def expected(model_dir: Path, items: list[dict], output: str = "prob") -> list[float]:
    m = RewardModel.load(model_dir)
    contexts = [render_context(as_turns(it["context"]), m.context_turns) for it in items]
    f = m.predict_proba if output == "prob" else m.predict_logit
    return f(contexts, [it["response"] for it in items]).tolist()


ITEMS = [
    {"context": "plan a trip", "response": "go to Lisbon"},
    {"context": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}, {"role": "user", "text": "why"}],
     "response": "because it is so"},
    {"context": [{"role": "user", "content": "thanks"}], "response": ""},
]  # fmt: skip


# ------------------------------------------------------------------ happy paths


def test_health_and_ready(client, models):
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 200
    body = r.json()
    assert body["ready"] is True and body["default_model"] == "love"
    assert [(m["name"], m["kind"], m["signal"], m["context_turns"]) for m in body["models"]] == [
        ("love", "length", "love", 2), ("up", "length", "thumbs_up", 0)]
    assert body["limits"]["max_batch"] == 4


def test_score_every_model_and_one(client, models):
    r = client.post("/score", json={"items": ITEMS})
    assert r.status_code == 200
    scores = r.json()["scores"]
    assert set(scores) == {"love", "up"}
    for name in scores:
        assert scores[name] == pytest.approx(expected(models[name], ITEMS), rel=1e-12)
    r = client.post("/score", json={"model": "up", "items": ITEMS, "output": "logit"})
    assert r.json() == {"scores": {"up": pytest.approx(expected(models["up"], ITEMS, "logit"), rel=1e-12)}}
    assert client.post("/score", json={"items": []}).json() == {"scores": {"love": [], "up": []}}


def test_score_renders_the_last_k_turns(probes, tmp_path):
    with TestClient(create_app({"p1": tmp_path / "probe1", "p3": tmp_path / "probe3"})) as c:
        scores = c.post("/score", json={"items": ITEMS, "output": "logit"}).json()["scores"]
    want = {"p1": ["user: plan a trip", "user: why", "user: thanks"],
            "p3": ["user: plan a trip", "user: hi\nassistant: hello\nuser: why", "user: thanks"]}  # fmt: skip
    for name, contexts in want.items():
        assert scores[name] == [Probe.f(ctx, it["response"]) for ctx, it in zip(contexts, ITEMS)]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("body,field", [
    ({"items": [{"context": "", "response": 3}]}, "items[0].response"),
    ({"items": [{"context": "", "response": "a"}, {"response": "b"}]}, "items[1].context"),
    ({"items": [{"context": [{"role": "user"}], "response": "a"}]}, "items[0].context[0]"),
    ({"items": [{"context": [{"role": "user", "text": "x", "content": "y"}], "response": "a"}]}, "items[0].context[0]"),
    ({"items": [{"context": [{"role": "", "text": "x"}], "response": "a"}]}, "items[0].context[0].role"),
    ({"items": [{"context": 5, "response": "a"}]}, "items[0].context"),
    ({"items": [{"context": "", "response": "a", "extra": 1}]}, "items[0].extra"),
    ({"items": [], "output": "odds"}, "output"),
    ({"item": []}, "items"),
    ({"items": "x"}, "items"),
])  # fmt: skip
def test_score_422_names_the_field(client, body, field):
    r = client.post("/score", json=body)
    assert r.status_code == 422
    assert field in [e["field"] for e in r.json()["detail"]], r.json()


def test_malformed_json_is_422(client):
    r = client.post("/score", content=b'{"items": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "(body)"
    assert r.json()["detail"][0]["type"] == "json_invalid"


def test_413_over_the_limits(client):
    item = {"context": "c", "response": "r"}
    r = client.post("/score", json={"items": [item] * 5})
    assert r.status_code == 413 and "5 items" in r.json()["detail"] and "--max-batch" in r.json()["detail"]
    assert client.post("/score", json={"items": [item] * 4}).status_code == 200
    r = client.post("/score", json={"items": [item, {"context": "", "response": "x" * 51}]})
    assert r.status_code == 413 and "items[1].response" in r.json()["detail"]
    long_turn = [{"role": "user", "text": "ok"}, {"role": "user", "text": "y" * 51}]
    r = client.post("/score", json={"items": [{"context": long_turn, "response": "r"}]})
    assert r.status_code == 413 and "items[0].context[1]" in r.json()["detail"]
    r = client.post("/score", json={"items": [{"context": [{"role": "user", "text": "t"}] * 2001, "response": "r"}]})
    assert r.status_code == 413 and "2001 turns" in r.json()["detail"]
    r = client.post("/get_reward", json={"query": ["pq"] * 7, "prompts": ["p"] * 7})
    assert r.status_code == 413 and "--max-reward-batch" in r.json()["detail"]
    r = client.post("/get_reward", json={"query": ["p" + "z" * 51], "prompts": ["p"]})
    assert r.status_code == 413 and "query[0]" in r.json()["detail"]


def test_404_unknown_model(client):
    r = client.post("/score", json={"model": "nope", "items": [ITEMS[0]]})
    assert r.status_code == 404 and "'nope'" in r.json()["detail"] and "love" in r.json()["detail"]
    r = client.post("/get_reward?model=nope", json={"query": ["pq"], "prompts": ["p"]})
    assert r.status_code == 404


def test_500_when_a_model_fails_and_others_are_unaffected(probes, tmp_path):
    with TestClient(create_app({"p": tmp_path / "probe0"})) as c:
        r = c.post("/score", json={"items": [{"context": "", "response": "boom"}]})
        assert r.status_code == 500 and "cannot score 'boom'" in r.json()["detail"]
        assert c.post("/score", json={"items": [{"context": "", "response": "fine"}]}).status_code == 200


def test_create_app_refuses_bad_models_and_limits(models, tmp_path):
    with pytest.raises(RewardModelError, match="no config.json"):
        create_app({"x": tmp_path})
    with pytest.raises(ValueError, match="max_batch"):
        create_app(models, max_batch=0)
    with pytest.raises(ValueError, match="no reward model"):
        create_app({})


# ------------------------------------------------------------------ OpenRLHF


CHATML = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nplan a trip<|im_end|>\n<|im_start|>assistant\n"
LLAMA3 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
          "<|start_header_id|>assistant<|end_header_id|>\n\nhello<|eot_id|>"
          "<|start_header_id|>user<|end_header_id|>\n\nwhy<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")  # fmt: skip


def test_prompt_turns_and_split_response():
    assert prompt_turns(CHATML) == [{"role": "system", "text": "be brief"}, {"role": "user", "text": "plan a trip"}]
    assert prompt_turns(LLAMA3) == [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"},
                                    {"role": "user", "text": "why"}]  # fmt: skip
    gemma = "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n<start_of_turn>model\n"
    assert prompt_turns(gemma) == [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "yo"}]
    assert prompt_turns("Question: 2+2?") == [{"role": "user", "text": "Question: 2+2?"}]
    assert split_response(CHATML + "go to Lisbon<|im_end|>", CHATML) == "go to Lisbon"
    assert split_response(LLAMA3 + "because <|eot_id|><|end_of_text|>", LLAMA3) == "because"
    assert split_response("<s>Q: hi A: yes</s>", "Q: hi A:") == "yes"  # a prefix token before the prompt
    assert split_response("something else", "Q:") is None


def test_get_reward_round_trip(client, models):
    queries = [CHATML + "go to Lisbon for three days<|im_end|>", LLAMA3 + "because it is so<|eot_id|>", "Q: 2+2? A: 4"]
    prompts = [CHATML, LLAMA3, "Q: 2+2? A:"]
    r = client.post("/get_reward", json={"query": queries, "prompts": prompts, "labels": ["", None, "4"],
                                         "templates": "ignored"})  # fmt: skip
    assert r.status_code == 200
    body = r.json()
    items = [{"context": prompt_turns(p), "response": split_response(q, p)} for q, p in zip(queries, prompts)]
    assert items[0]["response"] == "go to Lisbon for three days"
    assert body["rewards"] == pytest.approx(expected(models["love"], items), rel=1e-12)
    assert body["scores"] == body["rewards"]
    r = client.post("/get_reward?model=up&output=logit", json={"query": queries, "prompts": prompts})
    assert r.json()["rewards"] == pytest.approx(expected(models["up"], items, "logit"), rel=1e-12)
    # 6 queries with max_batch 4: scored in two chunks, answered in order
    r = client.post("/get_reward", json={"query": queries * 2, "prompts": prompts * 2})
    assert r.json()["rewards"] == pytest.approx(body["rewards"] * 2, rel=1e-12)


def test_get_reward_errors(client):
    r = client.post("/get_reward", json={"query": ["a b"], "prompts": []})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "prompts"
    r = client.post("/get_reward", json={"query": ["a b", "c d"], "prompts": ["a", "x"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query[1]"
    r = client.post("/get_reward", json={"prompts": ["a"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "query"
    r = client.post("/get_reward?output=odds", json={"query": ["a b"], "prompts": ["a"]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "output"


# ------------------------------------------------------------------ concurrency


def test_concurrent_requests_are_batched_and_answered_correctly(probes, tmp_path):
    app = create_app({"p": tmp_path / "probe2"}, max_batch=64)
    bodies = [{"items": [{"context": f"c{i}" * (i % 5), "response": "r" * j} for j in range(1 + i % 3)],
               "output": "logit"} for i in range(40)]  # fmt: skip

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
            return await asyncio.gather(*(c.post("/score", json=b) for b in bodies))

    responses = asyncio.run(fire())
    for b, r in zip(bodies, responses):
        assert r.status_code == 200
        want = [Probe.f(render_context(as_turns(it["context"]), 2), it["response"]) for it in b["items"]]
        assert r.json()["scores"]["p"] == want
    calls = probes["probe2"].calls[1:]  # the first call is the start-up check
    assert sum(calls) == sum(len(b["items"]) for b in bodies)
    assert max(calls) > 3  # requests that queued while the model was busy were scored together
    for w in app.state.workers.values():
        w.stop()


def test_parse_models(tmp_path):
    assert parse_models(["love=runs/rm/a", str(tmp_path / "up")]) == {"love": Path("runs/rm/a"), "up": tmp_path / "up"}
    with pytest.raises(ValueError, match="given twice"):
        parse_models(["a=x", "a=y"])
    with pytest.raises(ValueError, match="model name"):
        parse_models(["a b=x"])


# ------------------------------------------------------------------ loopback


def test_loadtest_on_loopback(tmp_path):
    """The real server in a child process, 4 clients for 3 seconds: every request answered."""
    out = tmp_path / "loadtest.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "loadtest", "--seconds", "3", "--clients", "4",
                           "--out", str(out), "--check"], cwd=ROOT, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    doc = json.loads(out.read_text())
    res = doc["results"]
    assert res["errors"] == 0 and res["requests"] == res["ok"] > 0 and res["items"] == 8 * res["ok"]
    p50, p99 = res["latency_ms"]["p50"], res["latency_ms"]["p99"]
    assert 0 < p50["value"] <= p99["value"] and p50["ci95"][0] <= p50["value"] <= p50["ci95"][1]
    assert doc["goals"] == [{"goal": "errors < 1", "value": 0, "passed": True}]
