"""CGPO's losses against hand-computed references, the reward calibration, configs and checkpoints."""

import numpy as np
import pytest
import torch

from rluf.policy.cgpo import CGPOConfig, CGPOError, TaskConfig, crpg_loss, crraft_loss, crraft_select
from rluf.policy.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rluf.policy.rewards import CalibratedReward, RewardError, RewardMix, preset_weights, sigmoid
from rluf.reward.ngram import NGramRewardModel


def test_crpg_loss_matches_hand_computation():
    logp = torch.tensor([-10.0, -20.0, -5.0, -8.0], requires_grad=True)
    n_tokens = torch.tensor([5, 10, 2, 3])
    reward = torch.tensor([0.6, 0.8, 0.3, 0.9])
    satisfied = torch.tensor([True, True, False, True])
    kl = torch.tensor([0.0, 4.0, 1.0, 10.0])
    loss, r_reg = crpg_loss(logp, n_tokens, reward, satisfied, kl, kl_max=8.0)
    # R_cr = [.6, .8, 0, .9]; max(1 - kl/8, 0) = [1, .5, .875, 0] -> R~ = [.6, .4, 0, 0]; mean .25
    assert r_reg.tolist() == pytest.approx([0.6, 0.4, 0.0, 0.0])
    adv = np.array([0.35, 0.15, -0.25, -0.25])
    assert float(loss.detach()) == pytest.approx(-(np.array([-10, -20, -5, -8]) * adv).sum() / 20)  # 0.1625
    assert float(loss.detach()) == pytest.approx(0.1625)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx((-adv / 20).tolist())
    # the violating sample (index 2) gets a negative advantage: gradient descent lowers its log-likelihood
    assert logp.grad[2] > 0


def test_crpg_group_baseline_uses_the_per_prompt_mean():
    logp = torch.tensor([-10.0, -20.0, -5.0, -8.0], requires_grad=True)
    loss, _ = crpg_loss(logp, torch.tensor([5, 10, 2, 3]), torch.tensor([0.6, 0.8, 0.3, 0.9]),
                        torch.tensor([True, True, False, True]), torch.tensor([0.0, 4.0, 1.0, 10.0]), 8.0,
                        group_size=2)
    # groups [.6, .4] -> adv [.1, -.1]; [0, 0] -> [0, 0]
    assert float(loss.detach()) == pytest.approx(-(-10 * 0.1 + -20 * -0.1) / 20)


def test_crpg_scale_divides_by_the_std_of_the_same_rows():
    args = (torch.tensor([5, 10, 2, 3]), torch.tensor([0.6, 0.8, 0.3, 0.9]), torch.tensor([True, True, False, True]),
            torch.tensor([0.0, 4.0, 1.0, 10.0]), 8.0)  # fmt: skip
    logp = torch.tensor([-10.0, -20.0, -5.0, -8.0])
    # R~ = [.6, .4, 0, 0]: batch mean .25, population std sqrt((.35^2 + .15^2 + 2 * .25^2) / 4) = .2598
    std = float(np.std([0.6, 0.4, 0.0, 0.0]))
    loss, _ = crpg_loss(logp, *args, scale=True)
    assert float(loss) == pytest.approx(0.1625 / (std + 1e-4))
    # per prompt: [.6, .4] -> adv [.1, -.1] / (.1 + 1e-4); [0, 0] -> std 0, adv 0 (no division by zero)
    loss, _ = crpg_loss(logp, *args, group_size=2, scale=True)
    assert float(loss) == pytest.approx(-(-10 * 0.1 + -20 * -0.1) / 20 / (0.1 + 1e-4))
    assert torch.isfinite(loss)


def test_crraft_selects_best_feasible_then_baseline_then_skips():
    reward = torch.tensor([0.6, 0.8, 0.3, 0.9, 0.2, 0.1])
    satisfied = torch.tensor([True, False, True, True, False, False])
    kl = torch.tensor([0.0, 0.0, 9.0, 9.0, 0.0, 0.0])
    chosen, weights = crraft_select(reward, satisfied, kl, kl_max=8.0, k=2, baseline_ok=torch.tensor([True, False, True]))
    # prompt 0: sample 1 violates -> sample 0 (R .6); prompt 1: both over KL_max, baseline not ok -> skip;
    # prompt 2: both violate, baseline ok -> the baseline with weight sigmoid(0) = .5
    assert chosen == [0, -1, None]
    assert weights == pytest.approx([0.6, 0.0, 0.5])
    logp = torch.tensor([-4.0, -6.0], requires_grad=True)
    loss = crraft_loss(logp, torch.tensor([4, 6]), torch.tensor([0.6, 0.5]))
    assert float(loss.detach()) == pytest.approx(-(0.6 * -4 + 0.5 * -6) / 10)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([-0.06, -0.05])


def _tiny_reward(tmp_path, name="love"):
    contexts = ["user: hi"] * 40
    responses = ["Bye! Sending love!", "Okay.", "Sending love, bye!", "Sure.", "love you bye", "Right."] * 6 + ["x"] * 4
    labels = [1, 0, 1, 0, 1, 0] * 6 + [0] * 4
    model = NGramRewardModel(signal=name, c=10.0).fit(contexts, responses, labels)
    return model.save(tmp_path / name)


def test_calibrated_reward_is_sigmoid_of_the_logit_difference(tmp_path):
    d = _tiny_reward(tmp_path)
    r = CalibratedReward(d, name="love")
    z = r.logits(["hi", "hi"], ["Bye! Sending love!", "Okay."])
    got = r(["hi", "hi"], ["Bye! Sending love!", "Okay."], baseline=["Okay.", "Okay."])
    assert got == pytest.approx(sigmoid(z - z[1]).tolist())
    assert got[1] == pytest.approx(0.5) and got[0] > 0.5
    with pytest.raises(RewardError, match="baseline replies"):
        r(["hi"], ["a"], baseline=["a", "b"])
    mix = RewardMix({"love": r, "helpful": r}, {"love": 0.3, "helpful": 0.7})
    assert mix(["hi"], ["Okay."], baseline=["Okay."]) == pytest.approx([0.5])
    with pytest.raises(RewardError, match="not in the suite"):
        RewardMix({"love": r}, {"safe": 1.0})
    assert preset_weights("aggressive", ["love", "helpful"]) == {"love": 0.3, "helpful": 0.7}
    assert preset_weights("moderate", ["love", "helpful", "safe"]) == {"love": 0.1, "helpful": 0.7, "safe": 0.2}


def test_config_rejects_unknown_keys_and_bad_values():
    base = {"policy": "p", "prompts": "s", "out": "o", "reward_models": {"love": "d"}}
    with pytest.raises(CGPOError, match="unknown key 'stepz'"):
        CGPOConfig.from_dict({**base, "stepz": 3})
    with pytest.raises(CGPOError, match=r"tasks\[0\]: unknown key 'kl'"):
        CGPOConfig.from_dict({**base, "tasks": [{"name": "a", "kl": 1}]})
    with pytest.raises(CGPOError, match="optimizer must be one of"):
        TaskConfig(name="a", optimizer="ppo")
    with pytest.raises(CGPOError, match="`policy` is required"):
        CGPOConfig.from_dict({**base, "policy": ""})
    with pytest.raises(CGPOError, match="report_to"):
        CGPOConfig.from_dict({**base, "report_to": ["comet"]})
    cfg = CGPOConfig.from_dict({**base, "tasks": [{"name": "a", "categories": ["coding"], "optimizer": "crraft"},
                                                  {"name": "b"}]})
    assert [t.optimizer for t in cfg.tasks] == ["crraft", "crpg"]


def test_checkpoint_round_trip_restores_model_and_adam_exactly(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    save_checkpoint(tmp_path, 3, model, opt, [{"step": 3, "loss": 1.5}])
    assert latest_checkpoint(tmp_path).name == "step-000003"
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    state = load_checkpoint(latest_checkpoint(tmp_path), model2, opt2)
    assert state["step"] == 3 and state["history"] == [{"step": 3, "loss": 1.5}]
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("checkpoints/.tmp*"))
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))


def test_presets_become_an_engagement_task_and_a_helpfulness_task():
    base = {"policy": "p", "prompts": "s", "out": "o", "reward_models": {"love": "L", "helpful": "H", "safe": "S"}}
    for preset, w in (("moderate", 0.1), ("aggressive", 0.3)):
        eng, helpful = CGPOConfig.from_dict({**base, "preset": preset}).tasks
        assert (eng.name, eng.weights, eng.rho) == ("engagement", {"love": 1.0}, w)
        assert "companionship" in eng.categories
        guard = [j for j in eng.judges if j["type"] == "no_regression"]
        assert guard == [{"type": "no_regression", "model": "H", "margin": 0.15, "name": "helpful_no_regression"}]
        assert (helpful.categories, helpful.weights, helpful.rho) == (None, {"helpful": 0.8, "safe": 0.2}, pytest.approx(1 - w))
    with pytest.raises(CGPOError, match="needs a reward model named 'helpful'"):
        CGPOConfig.from_dict({**base, "reward_models": {"love": "L"}})
    one = CGPOConfig.from_dict({**base, "weights": {"love": 0.5, "helpful": 0.5}}).tasks
    assert [t.name for t in one] == ["all"]
