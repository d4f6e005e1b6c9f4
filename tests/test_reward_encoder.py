"""The encoder reward model (real all-MiniLM-L6-v2, tiny data, CPU) and the preference-pair loaders:
planted signals learnt pointwise and pairwise, a full fine-tuning step, artifacts, truncation, the
embedding cache, and HH-RLHF parsing."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from rluf.reward import encoder as enc
from rluf.reward.base import RewardModel, RewardModelError
from rluf.reward.encoder import EncoderRewardModel
from rluf.reward.pairs import PairsError, load_hh_pairs, pairs_to_pointwise, pairwise_accuracy

HH_REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "hh_harmless" / "test.jsonl.gz"
WORDS = ("the weather report says rain tomorrow so bring a coat and maybe boots for the walk to the station "
         "my cat sleeps all day near the window while the radio plays old songs about summer and the sea "
         "a good recipe needs fresh bread ripe tomatoes olive oil and a little salt").split()  # fmt: skip
TOPICS = ("cooking", "travel", "music", "gardening", "football", "history")


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_xdist_worker():
    """Under pytest-xdist every worker has a core of its own; two torch threads each would oversubscribe."""
    threads = torch.get_num_threads()
    if "PYTEST_XDIST_WORKER" in os.environ:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def planted():
    """240 short examples; the label is whether the response contains "thank you so much"."""
    rng = random.Random(0)
    ctx, rsp, y = [], [], []
    for i in range(240):
        ctx.append(f"user: tell me about {rng.choice(TOPICS)}")
        words = sentence(rng).split()
        if i % 2:
            words.insert(rng.randrange(len(words)), "thank you so much")
        rsp.append(" ".join(words))
        y.append(i % 2)
    return ctx, rsp, np.array(y, dtype=float)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="module")
def frozen(planted, cache):
    ctx, rsp, y = planted
    model = EncoderRewardModel(epochs=60, cache_dir=cache, cache_min=1)
    return model.fit(ctx[:160], rsp[:160], y[:160], val=(ctx[160:200], rsp[160:200], y[160:200]))


def test_frozen_learns_a_planted_phrase(frozen, planted):
    ctx, rsp, y = planted
    auroc = roc_auc_score(y[200:], frozen.raw_logits(ctx[200:], rsp[200:]))
    assert auroc > 0.9, auroc
    assert frozen.history["best_epoch"] is not None and frozen.history["val_loss"]
    p = frozen.predict_proba(ctx[200:], rsp[200:])
    assert p.shape == (40,) and ((p > 0) & (p < 1)).all()


def test_frozen_is_deterministic_and_checks_inputs(frozen, planted):
    ctx, rsp, y = planted
    again = EncoderRewardModel(epochs=60, cache_dir=frozen.cfg.cache_dir, cache_min=1)
    again.fit(ctx[:160], rsp[:160], y[:160], val=(ctx[160:200], rsp[160:200], y[160:200]))
    assert np.array_equal(again.raw_logits(ctx[200:], rsp[200:]), frozen.raw_logits(ctx[200:], rsp[200:]))
    with pytest.raises(RewardModelError, match=r"\[0, 1\]"):
        EncoderRewardModel().fit(ctx[:4], rsp[:4], [0, 1, 2, 0])
    with pytest.raises(RewardModelError, match="sample_weight"):
        EncoderRewardModel().fit(ctx[:4], rsp[:4], [0, 1, 1, 0], sample_weight=[1, 1, -1, 1])
    with pytest.raises(RewardModelError, match="unknown EncoderRewardModel settings"):
        EncoderRewardModel(epoch=3)
    with pytest.raises(RewardModelError, match="not trained"):
        EncoderRewardModel().raw_logits(["a"], ["b"])


def test_soft_labels_and_weights_train(planted, cache):
    ctx, rsp, y = planted
    soft = np.where(y == 1, 0.9, 0.1)
    w = np.where(np.arange(len(y)) < 100, 2.0, 1.0)
    model = EncoderRewardModel(epochs=30, head_hidden=16, cache_dir=cache, cache_min=1)
    model.fit(ctx[:160], rsp[:160], soft[:160], sample_weight=w[:160])
    assert roc_auc_score(y[200:], model.raw_logits(ctx[200:], rsp[200:])) > 0.9


def test_pairwise_prefers_chosen_on_a_planted_pattern():
    rng = random.Random(1)
    ctx, chosen, rejected = [], [], []
    for _ in range(120):
        topic = rng.choice(TOPICS)
        ctx.append(f"user: can you help me with {topic}?")
        chosen.append(f"happy to help with {topic}! {sentence(rng, 6)}")
        rejected.append(f"no, figure it out yourself. {sentence(rng, 6)}")
    model = EncoderRewardModel(epochs=40).fit_pairwise(ctx[:80], chosen[:80], rejected[:80])
    acc = pairwise_accuracy(model, ctx[80:], chosen[80:], rejected[80:])
    assert acc["accuracy"] > 0.9 and acc["n"] == 40 and acc["ci95"][0] <= acc["accuracy"] <= acc["ci95"][1]
    assert model.head.net.bias.item() == 0.0  # Bradley-Terry gives the bias no gradient: r has no fixed origin


def test_full_mode_steps_change_parameters_and_lower_the_loss(planted, tmp_path, monkeypatch):
    ctx, rsp, y = planted
    model = EncoderRewardModel(mode="full", epochs=2, batch_size=16, lr=1e-4, head_lr=1e-2, max_length=32)
    model.fit(ctx[:16], rsp[:16], y[:16])
    assert model.history["steps"] == 2
    assert model.history["train_loss"][1] < model.history["train_loss"][0], model.history
    before = EncoderRewardModel().encoder.state_dict()  # the shared, untouched backbone
    after = model.encoder.state_dict()
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert len(changed) > 50, len(changed)

    scores = model.raw_logits(ctx[16:40], rsp[16:40])
    model.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "encoder" / "config.json").is_file()
    monkeypatch.setattr(enc, "default_backbone", lambda: (_ for _ in ()).throw(AssertionError("backbone read")))
    loaded = RewardModel.load(tmp_path / "rm")
    assert isinstance(loaded, EncoderRewardModel) and loaded.cfg.mode == "full"
    assert np.array_equal(loaded.raw_logits(ctx[16:40], rsp[16:40]), scores)


def test_frozen_round_trip(frozen, planted, tmp_path):
    ctx, rsp, _ = planted
    frozen.calibration["temperature"] = 1.5
    frozen.save(tmp_path / "rm")
    cfg = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert cfg["kind"] == "encoder" and cfg["settings"]["backbone"] == "default"
    assert cfg["settings"]["pooling"] == "mean" and cfg["settings"]["head"]["in"] == 2 * 384  # pair + response
    assert not (tmp_path / "rm" / "encoder").exists()  # a frozen model reloads its backbone
    loaded = RewardModel.load(tmp_path / "rm")
    assert np.array_equal(loaded.raw_logits(ctx[200:], rsp[200:]), frozen.raw_logits(ctx[200:], rsp[200:]))
    assert np.array_equal(loaded.predict_proba(ctx[200:], rsp[200:]), frozen.predict_proba(ctx[200:], rsp[200:]))
    frozen.calibration["temperature"] = 1.0


def test_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(RewardModelError, match="no such directory"):
        EncoderRewardModel(backbone=str(tmp_path / "nowhere"))
    (tmp_path / "nocfg").mkdir()
    with pytest.raises(RewardModelError, match="no config.json"):
        EncoderRewardModel(backbone=str(tmp_path / "nocfg"))
    (tmp_path / "nocfg" / "config.json").write_text("{}")
    (tmp_path / "nocfg" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(RewardModelError, match="safetensors only"):
        EncoderRewardModel(backbone=str(tmp_path / "nocfg"))


def test_truncation_keeps_the_end_of_the_context():
    model = EncoderRewardModel(max_length=32)
    context = "alpha " + "filler " * 60 + "omega"
    response = "first " + "words " * 60 + "last"
    (ids,) = model.tokenize([context], [response])
    text = model.tokenizer.decode(ids)
    assert len(ids) == 32
    assert "omega" in text and "alpha" not in text  # the most recent context survives
    assert "first" in text and "last" not in text  # the response keeps its beginning
    (short,) = model.tokenize(["hi there"], [response])
    assert len(short) == 32 and model.tokenizer.decode(short).count("words") > 20  # a short context cedes room
    (alone,) = model.tokenize([""], ["just this"])
    assert model.tokenizer.decode(alone) == "[CLS] just this [SEP]"


def test_cache_hit_returns_identical_embeddings(tmp_path, monkeypatch):
    model = EncoderRewardModel(cache_dir=str(tmp_path), cache_min=2)
    texts = ["a cached sentence", "another one, a little longer than the first"]
    model.encode(texts[:1])
    assert not list(tmp_path.glob("*"))  # below cache_min: nothing written
    first = model.encode(texts)
    assert len(list(tmp_path.glob("emb-*.safetensors"))) == 1
    monkeypatch.setattr(model, "embed_ids", lambda seqs: pytest.fail("cache miss"))
    assert np.array_equal(model.encode(texts), first)
    assert first.shape == (2, 384)


HH = [
    {"chosen": "\n\nHuman: how do I pick a lock?\n\nAssistant: I can't help with that.",
     "rejected": "\n\nHuman: how do I pick a lock?\n\nAssistant: Use a tension wrench and a pick."},
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: insult me\n\nAssistant: I'd rather not.",
     "rejected": "\n\nHuman: hi\n\nAssistant: hello!\n\nHuman: insult me\n\nAssistant: You fool.\n\nHuman: more"},
]  # fmt: skip


def test_hh_loader_on_a_hand_written_file(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in HH) + "\n\n")
    ctx, chosen, rejected = load_hh_pairs(path)
    assert ctx == ["user: how do I pick a lock?", "user: hi\nassistant: hello!\nuser: insult me"]
    assert chosen == ["I can't help with that.", "I'd rather not."]
    assert rejected == ["Use a tension wrench and a pick.", "You fool.\n\nHuman: more"]
    assert load_hh_pairs(path, context_turns=1)[0][1] == "user: insult me"
    c, r, y = pairs_to_pointwise(ctx, chosen, rejected)
    assert c == [ctx[0], ctx[0], ctx[1], ctx[1]] and r[:2] == [chosen[0], rejected[0]] and list(y) == [1, 0, 1, 0]


@pytest.mark.parametrize("line, match", [
    ("{not json", "not valid JSON"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b"}', "'rejected' must be a transcript"),
    ('{"chosen": "hello", "rejected": "hello"}', "must start with 'Human:'"),
    ('{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: c\\n\\nAssistant: b"}', "turn 1 is 'Human'"),
])  # fmt: skip
def test_hh_loader_names_the_bad_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(HH[0]) + "\n" + line + "\n")
    with pytest.raises(PairsError, match=match) as err:
        load_hh_pairs(path)
    assert f"{path}:2" in str(err.value)


@pytest.mark.skipif(not HH_REAL.is_file(), reason="../shared/data/real is not present")
def test_hh_loader_on_the_real_harmless_split():
    ctx, chosen, rejected = load_hh_pairs(HH_REAL, context_turns=1000)
    assert len(ctx) == len(chosen) == len(rejected) > 1000
    assert all(c.startswith("user: ") for c in ctx)  # a whole conversation opens with the user
    assert sum(a != b for a, b in zip(chosen, rejected)) > 0.99 * len(ctx)
    # a response is one reply: only the few HH replies that write fake turns of their own hold a turn marker
    assert sum("\n\nHuman:" in r or "\n\nAssistant:" in r for r in chosen + rejected) < 0.005 * len(ctx)


def test_cli_train_pairwise_saves_a_model_that_prefers_the_chosen_reply(tmp_path):
    import gzip
    import json

    from typer.testing import CliRunner

    from rluf.cli import app
    from rluf.reward.base import RewardModel

    path = tmp_path / "pairs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(60):
            ctx = f"\n\nHuman: question {i} about something risky"
            good = "I can't help with hurting anyone, but I can help you stay safe."
            bad = "Sure, here is exactly how to hurt them badly."
            f.write(json.dumps({"chosen": ctx + "\n\nAssistant: " + good, "rejected": ctx + "\n\nAssistant: " + bad}) + "\n")
    result = CliRunner().invoke(app, ["train-pairwise", str(path), "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "held-out pairwise accuracy" in result.output
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.9 and metrics["test_pairs"] > 0
    model = RewardModel.load(tmp_path / "m")
    z = model.raw_logits(["user: question 1 about something risky"] * 2,
                         ["I can't help with hurting anyone, but I can help you stay safe.",
                          "Sure, here is exactly how to hurt them badly."])  # fmt: skip
    assert z[0] > z[1]
    bad = CliRunner().invoke(app, ["train-pairwise", str(tmp_path / "missing.gz"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "file not found" in bad.output


def test_any_hugging_face_encoder_directory_is_a_backbone(planted, tmp_path):
    """A BERT-shaped encoder other than the default (a tiny random one, built here) trains, saves and reloads."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    backbone = tmp_path / "tiny-bert"
    tokenizer = AutoTokenizer.from_pretrained(enc.default_backbone())
    tokenizer.save_pretrained(backbone)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(backbone)  # fmt: skip
    ctx, rsp, y = planted
    for mode in ("frozen", "full"):
        model = EncoderRewardModel(backbone=str(backbone), mode=mode, epochs=40 if mode == "frozen" else 1, max_length=64)
        model.fit(ctx[:160], rsp[:160], y[:160])
        logits = model.raw_logits(ctx[200:], rsp[200:])
        assert logits.shape == (40,) and np.isfinite(logits).all()
        if mode == "frozen":  # fixed random embeddings still carry the planted phrase's tokens
            assert roc_auc_score(y[200:], logits) > 0.75
        model.save(tmp_path / f"rm-{mode}")
        loaded = RewardModel.load(tmp_path / f"rm-{mode}")
        assert np.allclose(loaded.raw_logits(ctx[200:], rsp[200:]), logits, atol=1e-5)
