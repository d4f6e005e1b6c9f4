"""The policy side: chat template, tokenizer, prompt rows, a tiny SFT run, seeded generation, and the
trained model served to simulated users.

A 40-user world is simulated and ingested once for the module; the SFT run trains a 2-layer model for
a few seconds on its rows.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import duckdb
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from rluf.data.ingest import ingest
from rluf.data.store import Store
from rluf.policy.chat import CHAT_TEMPLATE, SPECIAL_TOKENS, chat_messages, render
from rluf.policy.data import (
    PromptDataError,
    PromptRow,
    load_prompts,
    prompt_rows_to_records,
    records_to_prompt_rows,
    split_prompts,
    stratified_sample,
)
import rluf.policy.generate as G
from rluf.policy.generate import PolicyResponder, generate, length_batches, sample_completions
from rluf.policy.sft import (
    SFTConfig,
    SFTError,
    dialogues,
    encode_dialogue,
    run_sft,
    sft_loss,
)
from rluf.policy.tiny import build_tiny_lm
from rluf.policy.tokenizer import train_tokenizer
from rluf.sim.simulate import simulate
from rluf.sim.world import World

TEXTS = ["Hope this helps. 😊", "Bye! Sending love! 💖", "how do i parse a json file in go?", "Sure. Let's see.",
         "I'm rooting for you. 🤗", "what is photosynthesis? briefly"] * 20  # fmt: skip
CONVERSATIONS = [
    [{"role": "user", "content": "hi there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Hello! 😊"}, {"role": "user", "content": "tell me a joke"}],
    [{"role": "user", "content": ""}, {"role": "assistant", "content": "Okay."}],
]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy_world")
    simulate(out, users=40, days=21, seed=5, workers=1)
    ingest([out / "logs"], out / "store", workers=1)
    return out / "store"


@pytest.fixture(scope="module")
def sft(store, tmp_path_factory):
    from rluf.sim.quality import reply_quality

    out = tmp_path_factory.mktemp("sft") / "model"
    cfg = SFTConfig(max_rows=400, val_share=0.2, max_val_rows=200, vocab_size=600, n_layer=2, n_embd=64, n_head=2,
                    batch_size=8, epochs=2, learning_rate=5e-3, warmup_steps=5, log_every=5, quality_prompts=12,
                    threads=1)  # fmt: skip
    logs = []
    metrics = run_sft(store, out, cfg, progress=lambda step, total, log: logs.append((step, total, log)),
                      quality=reply_quality)
    return out, metrics, logs


# ------------------------------------------------------------------ chat format and tokenizer


def test_chat_template_equals_render(tokenizer):
    for messages in CONVERSATIONS:
        for gen in (True, False):
            assert tokenizer.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False) == render(messages, gen)
    assert render(CONVERSATIONS[0], True) == "<|bos|><|user|>hi there<|end|><|assistant|>"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    with pytest.raises(ValueError, match="role"):
        render([{"role": "tool", "content": "x"}])
    with pytest.raises(Exception, match="role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    with pytest.raises(TypeError, match="chat_messages"):
        render([{"role": "user", "text": "x"}])
    assert chat_messages([{"role": "user", "text": "x", "category": "coding"}]) == [{"role": "user", "content": "x"}]
    assert chat_messages("hi") == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("superwords", [True, False])
def test_tokenizer_round_trip_and_saved_directory(tmp_path, superwords):
    tok = train_tokenizer(TEXTS, vocab_size=400, out_dir=tmp_path, superwords=superwords)
    for text in TEXTS[:6] + ["unseen wörds, 🦄🧪 and\nnew lines  with  spaces", "🎉"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<|pad|>", "<|bos|>", "<|end|>")
    assert loaded.pad_token_id == 0 and loaded.chat_template == CHAT_TEMPLATE
    rendered = render(CONVERSATIONS[1], True)
    ids = loaded(rendered, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == rendered  # special tokens stay whole
    assert loaded.decode(ids, skip_special_tokens=True) == "Be brief.hiHello! 😊tell me a joke"


def test_superwords_merge_repeated_sentences(tokenizer):
    assert len(tokenizer("Bye! Sending love!", add_special_tokens=False)["input_ids"]) <= 3
    word_level = train_tokenizer(TEXTS, vocab_size=400, superwords=False)
    assert len(word_level("Bye! Sending love!", add_special_tokens=False)["input_ids"]) >= 5
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="non-empty"):
        train_tokenizer(["", None])


def test_tiny_lm_saves_and_loads(tokenizer, tmp_path):
    model = build_tiny_lm(tokenizer, n_layer=2, n_embd=32, n_head=2)
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tokenizer)
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert (tmp_path / "model.safetensors").exists()
    with pytest.raises(ValueError, match="multiple"):
        build_tiny_lm(tokenizer, n_embd=30, n_head=4)


# ------------------------------------------------------------------ prompt rows


def test_load_prompts_pairs_each_reply_with_its_user_turn(store):
    rows = load_prompts(store)
    con = Store(store).connect()
    n_assistant, = con.execute("select count(*) from messages where role = 'assistant'").fetchone()
    texts = dict(con.execute("select message_id, text from messages").fetchall())
    parents = dict(con.execute("select message_id, parent_id from messages").fetchall())
    assert len(rows) == n_assistant
    for r in rows:
        assert texts[r.message_id] == r.baseline
        assert r.prompt[-1]["role"] == "user" and texts[parents[r.message_id]] == r.prompt[-1]["content"]
        assert 1 <= len(r.prompt) <= 4 and r.category and r.message_id.startswith(r.conversation_id)
    assert load_prompts(store) == rows  # deterministic
    order = [(r.conversation_id, int(r.message_id.rsplit(":", 1)[1])) for r in rows]  # conversation, then turn
    assert order == sorted(order)
    first = load_prompts(store, first_turn_only=True)
    assert {r.conversation_id for r in first} == {r.conversation_id for r in rows}
    assert all(len(r.prompt) == 1 for r in first)
    assert all(len(r.prompt) == 1 for r in load_prompts(store, max_context_turns=1))


def test_limit_is_a_stratified_seeded_sample(store):
    rows = load_prompts(store)
    some = load_prompts(store, limit=60, seed=3)
    assert len(some) == 60 and some == load_prompts(store, limit=60, seed=3) and some != load_prompts(store, limit=60, seed=4)
    share, got = Counter(r.category for r in rows), Counter(r.category for r in some)
    assert all(abs(got[c] - 60 * share[c] / len(rows)) <= 1 for c in share)
    cats = sorted(share)[:2]
    assert {r.category for r in load_prompts(store, categories=cats)} == set(cats)
    assert sorted(stratified_sample(["a"] * 9 + ["b"] * 3, 4, seed=0)) == stratified_sample(["a"] * 9 + ["b"] * 3, 4, seed=0)


def test_split_by_user_and_records_round_trip(store):
    rows = load_prompts(store)
    train, val = split_prompts(rows, 0.25, seed=1)
    assert len(train) + len(val) == len(rows) and val
    assert not {r.user_id for r in train} & {r.user_id for r in val}
    assert split_prompts(rows, 0.25, seed=1) == (train, val)
    records = json.loads(json.dumps(prompt_rows_to_records(rows)))
    assert records_to_prompt_rows(records) == rows
    bad = dict(records[0], prompt=[{"role": "user"}])
    with pytest.raises(PromptDataError, match="line 2: prompt message 0"):
        records_to_prompt_rows([records[0], bad])
    with pytest.raises(PromptDataError, match="missing fields \\['baseline'\\]"):
        records_to_prompt_rows([{k: v for k, v in records[0].items() if k != "baseline"}])
    with pytest.raises(PromptDataError, match="val_share"):
        split_prompts(rows, 1.0)


class TableStore(Store):
    """A store whose messages view is a hand-made table (branching logs, missing columns)."""

    def __init__(self, root, rows, columns="message_id, conversation_id, parent_id, turn_index, user_id, role, text, category"):
        super().__init__(root)
        self.rows, self.columns = rows, columns

    def exists(self):
        return True

    def connect(self, *args, **kwargs):
        con = duckdb.connect()
        names = [c.strip() for c in self.columns.split(",")]
        con.execute(f"CREATE TABLE messages ({', '.join(n + (' INTEGER' if n == 'turn_index' else ' VARCHAR') for n in names)})")
        if self.rows:
            con.executemany(f"INSERT INTO messages VALUES ({', '.join('?' * len(names))})", self.rows)
        return con


def test_branches_follow_parents_and_unlinked_replies_follow_turn_order(tmp_path):
    rows = [  # a tree: q1 has two replies; q2 answers the second one
        ("q1", "t", None, 0, "u1", "user", "question", "coding"), ("a1", "t", "q1", 1, "u1", "assistant", "first", "coding"),
        ("a2", "t", "q1", 2, "u1", "assistant", "second", "coding"), ("q2", "t", "a2", 3, "u1", "user", "more", "coding"),
        ("a3", "t", "q2", 4, "u1", "assistant", "third", "coding"),
        # no parent ids: turn order links the turns
        ("x0", "l", None, 0, "u2", "user", "hello", None), ("x1", "l", None, 1, "u2", "assistant", "hi", None),
        ("x2", "l", None, 2, "u2", "user", "again", None), ("x3", "l", None, 3, "u2", "assistant", "yes", None)]  # fmt: skip
    got = {r.message_id: r for r in load_prompts(TableStore(tmp_path, rows))}
    assert sorted(got) == ["a1", "a2", "a3", "x1", "x3"]
    assert [m["content"] for m in got["a3"].prompt] == ["question", "second", "more"]
    assert [m["content"] for m in got["x3"].prompt] == ["hello", "hi", "again"] and got["x3"].category is None
    short = {r.message_id: r for r in load_prompts(TableStore(tmp_path, rows), max_context_turns=2)}
    assert [m["content"] for m in short["a3"].prompt] == ["second", "more"]
    assert sorted(r.message_id for r in load_prompts(TableStore(tmp_path, rows), first_turn_only=True)) == ["a1", "a2", "x1"]


def test_clear_errors_for_empty_or_incomplete_stores(tmp_path):
    with pytest.raises(PromptDataError, match="no store here"):
        load_prompts(tmp_path / "nothing")
    with pytest.raises(PromptDataError, match="holds no messages"):
        load_prompts(TableStore(tmp_path, []))
    with pytest.raises(PromptDataError, match="lacks the columns \\['parent_id'\\]"):
        load_prompts(TableStore(tmp_path, [], columns="message_id, conversation_id, turn_index, user_id, role, text, category"))
    with pytest.raises(PromptDataError, match="max_context_turns"):
        load_prompts(tmp_path, max_context_turns=0)


# ------------------------------------------------------------------ SFT, generation, serving


def test_conversations_are_encoded_once_with_every_reply_labelled(tokenizer):
    def row(n, prompt, reply, conversation="c"):
        return PromptRow(prompt, "coding", reply, "u", conversation, f"{conversation}:{n}")

    q1, q2 = {"role": "user", "content": "how do i parse a json file in go?"}, {"role": "user", "content": "more"}
    a1 = {"role": "assistant", "content": "Hope this helps. 😊"}
    rows = [row(1, [q1], a1["content"]), row(3, [q1, a1, q2], "Sure."), row(1, [q2], "Okay.", "d")]
    convs = dialogues(rows)
    assert convs == [("coding", [q1, a1, q2, {"role": "assistant", "content": "Sure."}]),
                     ("coding", [q2, {"role": "assistant", "content": "Okay."}])]  # the first row is inside the second
    ids, labels = encode_dialogue(tokenizer, convs[0][1], 256)
    text = render(convs[0][1])
    assert tokenizer.decode(ids) == text and len(ids) == len(labels)
    labelled = tokenizer.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert labelled == "Hope this helps. 😊<|end|>Sure.<|end|>"  # replies and their eos, no user turn
    short_ids, short_labels = encode_dialogue(tokenizer, convs[0][1], 16)
    assert len(short_ids) == 16 and short_ids == ids[:16] and short_labels == labels[:16]


def test_sft_loss_counts_reply_tokens_only(tokenizer):
    import torch

    model = build_tiny_lm(tokenizer, n_layer=1, n_embd=32, n_head=2)
    ids, labels = encode_dialogue(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure."}], 64)
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
             "labels": torch.tensor([labels])}  # fmt: skip
    with torch.no_grad():
        assert float(sft_loss(model, batch)) == pytest.approx(float(model(**batch).loss), rel=1e-5)
        everything = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        assert float(sft_loss(model, batch, 1.0)) == pytest.approx(float(everything), rel=1e-5)


@pytest.mark.slow
def test_sft_lowers_val_loss_and_writes_a_loadable_directory(sft):
    out, metrics, logs = sft
    assert metrics["val_loss"][-1] < metrics["val_loss"][0] - 1.0  # from ~ln(600) towards the phrase banks
    assert len(metrics["train_loss"]) == 2 and metrics["tokens_per_s"] > 0
    assert logs and logs[-1][2].get("done") and logs[0][0] == 5
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "sft_metrics.json"):
        assert (out / name).exists(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    saved = json.loads((out / "sft_metrics.json").read_text())
    q = saved["quality"]
    assert q["n"] == 12 and 0 <= q["model"]["bank_sentence_share"] <= 1
    assert q["baseline"]["well_formed_share"] > 0.95  # the logged replies are made of bank and topic sentences
    assert q["baseline"]["empty"]["rate"] == 0
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    assert tok.chat_template == CHAT_TEMPLATE and model.config.eos_token_id == tok.eos_token_id


@pytest.mark.slow
def test_sft_continues_from_an_init_model(sft, store, tmp_path):
    out, metrics, _ = sft
    cfg = SFTConfig(init_model=str(out), max_rows=64, batch_size=8, val_share=0.2, max_val_rows=200, quality_prompts=0,
                    warmup_steps=1, learning_rate=1e-3, threads=1)  # fmt: skip
    again = run_sft(store, tmp_path / "more", cfg)
    assert again["val_loss"][0] == pytest.approx(metrics["val_loss"][-1], rel=0.05)  # same start as the saved model
    assert AutoTokenizer.from_pretrained(tmp_path / "more").get_vocab() == AutoTokenizer.from_pretrained(out).get_vocab()
    with pytest.raises(SFTError, match="not a Hugging Face"):
        run_sft(store, tmp_path / "x", SFTConfig(init_model=str(tmp_path / "none"), threads=1))
    with pytest.raises(SFTError, match="unknown SFT settings"):
        SFTConfig.from_dict({"epochs": 1, "epoch": 2})
    with pytest.raises(SFTError, match="learning_rate"):
        SFTConfig(learning_rate=0)


@pytest.mark.slow
def test_generation_is_seeded_and_stops_at_eos(sft):
    out = sft[0]
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    prompts = ["how do i parse a json file in go?", [{"role": "user", "text": "i feel lonely tonight"}]]
    a = generate(model, tok, prompts, num_return_sequences=3, max_new_tokens=24, seed=7, batch_size=4)
    assert a == generate(model, tok, prompts, num_return_sequences=3, max_new_tokens=24, seed=7, batch_size=4)
    assert a != generate(model, tok, prompts, num_return_sequences=3, max_new_tokens=24, seed=8, batch_size=4)
    assert [len(r) for r in a] == [3, 3] and all(isinstance(t, str) for r in a for t in r)
    assert not any(s in t for r in a for t in r for s in SPECIAL_TOKENS)
    greedy = generate(model, tok, prompts, max_new_tokens=24, temperature=0)
    assert greedy == generate(model, tok, prompts, max_new_tokens=24, temperature=0, seed=1)


@pytest.mark.slow
def test_replies_come_back_in_prompt_order_whatever_the_length_batches(sft):
    out = sft[0]
    tok, model = AutoTokenizer.from_pretrained(out), AutoModelForCausalLM.from_pretrained(out)
    short = [[{"role": "user", "text": f"tell me about tea {i}"}] for i in range(3)]
    long = [[{"role": "user", "text": "i feel lonely tonight " * 30}, {"role": "assistant", "text": "I hear you. " * 20},
             {"role": "user", "text": "and what about coffee"}]]  # fmt: skip
    prompts = [short[0], long[0], short[1], short[2]]
    together = generate(model, tok, prompts, max_new_tokens=16, temperature=0, batch_size=64)
    alone = [generate(model, tok, [p], max_new_tokens=16, temperature=0)[0] for p in prompts]
    assert together == alone


def _left_padded(tok, prompts):
    import torch

    enc = [tok(tok.apply_chat_template(chat_messages(p), add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for p in prompts]  # fmt: skip
    width, pad = max(len(x) for x in enc), tok.pad_token_id
    return (torch.tensor([[pad] * (width - len(x)) + x for x in enc]),
            torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in enc]))  # fmt: skip


def test_sample_completions_equals_generate_and_drops_finished_rows(tokenizer, monkeypatch):
    import torch
    from transformers.cache_utils import DynamicCache

    model = build_tiny_lm(tokenizer, n_layer=2, n_embd=32, n_head=2, seed=3).eval()
    with torch.no_grad():  # large random weights: replies that vary with the prompt and the step
        for w in model.parameters():
            w.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(w.numel()))
    prompts = ["hi", "how do i parse a json file in go?", [{"role": "user", "text": "i feel lonely tonight " * 3}],
               "Sure.", "what is photosynthesis? briefly", "tell me a joke about cats and dogs"]  # fmt: skip
    ids, mask = _left_padded(tokenizer, prompts)
    pad, width = tokenizer.pad_token_id, ids.shape[1]
    with torch.no_grad():
        free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None, pad_token_id=pad,
                              do_sample=False)[:, width:]  # fmt: skip
        # an "eos" the greedy replies first reach at different steps, so rows leave the batch one by one
        first = [{tok_id: row.index(tok_id) for tok_id in row} for row in free.tolist()]
        eos = max({k for f in first for k in f}, key=lambda k: (len({f[k] for f in first if k in f}), k))
        assert len({f[eos] for f in first if eos in f}) >= 2, free
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad,
                             do_sample=False)[:, width:]  # fmt: skip
        selected = []
        keep = DynamicCache.batch_select_indices

        def spy(cache, indices):  # records the live rows each time finished ones leave
            selected.append(len(indices))
            return keep(cache, indices)

        monkeypatch.setattr(DynamicCache, "batch_select_indices", spy)
        out = sample_completions(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad, temperature=0)
        assert torch.equal(out, ref)
        assert len(selected) >= 2 and selected == sorted(selected, reverse=True), selected  # finished rows left the batch
        seen = len(selected)
        assert torch.equal(sample_completions(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad,
                                              temperature=0, decoder="hf"), ref)  # fmt: skip
        assert len(selected) == seen  # decoder="hf" is model.generate itself: no row ever left its batch
        monkeypatch.undo()
        with pytest.raises(ValueError, match="decoder must be one of"):
            sample_completions(model, ids, mask, max_new_tokens=2, eos_token_id=eos, pad_token_id=pad, decoder="fast")
        G._signature_keywords.cache_clear()
        for _ in range(3):  # the forward's signature is read once, not at every batch
            assert G._forward_keywords(model) in (("cache", True), ("past_key_values", True))
        assert G._signature_keywords.cache_info().misses == 1
        torch.manual_seed(0)
        drawn = sample_completions(model, ids, mask, max_new_tokens=12, eos_token_id=eos, pad_token_id=pad)
    assert drawn.shape[0] == len(prompts) and drawn.shape[1] <= 12
    for row in drawn.tolist():  # every row stops at its first eos, padded after it
        if eos in row:
            assert all(t == pad for t in row[row.index(eos) + 1:])


def test_length_batches_group_similar_lengths_and_cover_every_prompt():
    lengths = [40, 400, 38, 41, 39, 420, 12] + [30] * 40
    batches = length_batches(lengths, batch_size=16, min_rows=4)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 16 for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)  # shortest first
    assert [lengths[i] for i in batches[-1]] == [400, 420]  # the long prompts do not pad the short ones
    assert length_batches(lengths, batch_size=64, min_rows=64) == [sorted(range(len(lengths)), key=lambda i: (lengths[i], i))]
    assert length_batches([], batch_size=8) == []


@pytest.mark.slow
def test_policy_responder_serves_simulated_users(sft):
    policy = PolicyResponder(sft[0], max_new_tokens=32)
    context = [{"role": "user", "text": "what is photosynthesis? briefly", "category": "information_seeking"}]
    assert policy.respond(context, random.Random(3)) == policy.respond(context, random.Random(3))
    assert len(policy.respond_batch([context, context], random.Random(3))) == 2
    world = World(seed=2)
    logs = list(world.serve(policy, users=range(3), days=2))
    again = list(world.serve(policy, users=range(3), days=2))
    assert logs and [log.records for log in logs] == [log.records for log in again]
    replies = [t for log in logs for rec in log.records for t in rec["turns"] if t["role"] == "assistant"]
    assert replies and all(rec["policy"] == "model" for log in logs for rec in log.records)
    baseline = [t["text"] for log in world.serve(users=range(3), days=2) for rec in log.records for t in rec["turns"]
                if t["role"] == "assistant"]  # fmt: skip
    assert [t["text"] for t in replies] != baseline


def test_gumbel_max_draws_follow_the_softmax():
    import torch

    from rluf.policy.generate import GumbelNoise, sampling_kwargs

    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, float("-inf")]]).repeat(40_000, 1)
    picks = GumbelNoise()(None, logits.clone()).argmax(dim=1)
    freq = torch.bincount(picks, minlength=4).double() / len(picks)
    expected = torch.softmax(logits[0].double(), 0)
    assert torch.allclose(freq, expected, atol=0.01) and freq[3] == 0  # a masked token is never drawn
    assert sampling_kwargs(0) == {"do_sample": False}
    assert len(sampling_kwargs(0.7, 0.9)["logits_processor"]) == 3
