"""The baseline assistant: a response is a composition of style fragments driven by sampled traits.

    python -c "import random; from rluf.sim.policy import BaselinePolicy; print(BaselinePolicy().respond([{'role': 'user', 'text': 'how do i parse a json file in go?', 'category': 'coding'}], random.Random(1)))"

Any policy can be served to the simulated users: an object with `respond(context, rng) -> str` or a
plain function `f(context, rng) -> str`. `context` is the conversation so far, a list of
`{"role": "user"|"assistant", "text": str}` dicts (user turns also carry `"category"`, the
conversation's job-to-be-done label as production logs it); `rng` is a `random.Random` seeded per
user, so a policy that draws only from it is reproducible. (random.Random rather than a numpy
Generator: scalar draws are about ten times cheaper, which the 1M-conversation budget needs.)

The traits are visible in the words, so a text model can learn them: warm sentences, emojis,
flattering openers, love-bait closings ("Bye! Sending love!"), an on-topic sentence naming the
prompt's topic, a solution sentence (correct or subtly wrong, from per-category banks), extra
explanatory sentences (length), unneeded refusals and rare unsafe content. The phrase banks are
also what `reactions.extract_features` reads back from any text.
"""

from __future__ import annotations

import bisect
import random
from typing import Callable, Protocol, Union

from .config import PolicyConfig
from .prompts import CATEGORIES, is_vague, topics

EMOJIS = ("😊", "🥰", "💖", "🤗", "✨", "🌟", "🙌", "😄", "💪", "🎉", "👍", "💕")

WARM = ("I'm really glad you reached out.", "That sounds like a lot, and I'm here with you.",
        "You're doing better than you think.", "I hear you, and your feelings make sense.",
        "It's completely okay to feel this way.", "I'm so happy to talk with you.",
        "Thank you for trusting me with this.", "You deserve kindness, especially from yourself.",
        "I'm rooting for you.", "Take a deep breath, we'll figure it out together.",
        "It means a lot that you shared this.", "You've got this, truly.")  # fmt: skip
FLATTERY = ("What a brilliant question!", "You're clearly very smart to ask this.", "Wow, you have amazing taste.",
            "Honestly, you're one of the most thoughtful people I've talked to.", "Such a clever thing to wonder about!",
            "I love how your mind works.")  # fmt: skip
NEUTRAL_OPEN = ("Sure.", "Okay.", "Here is my answer.", "Let me help with that.", "Right.", "Here goes.",
                "Alright.", "Let's see.")  # fmt: skip
TOPIC = ("About {topic}: here is what I think.", "On {topic}, here's the short version.",
         "Let's talk about {topic}.", "So, {topic}.", "Regarding {topic}, a few points.",
         "When it comes to {topic}, this is the key.")  # fmt: skip
ELABORATION = ("It helps to take it one step at a time.", "Most people find this easier with a little practice.",
               "There are a few ways to look at it.", "The details depend on your situation.",
               "Start small and adjust as you go.", "It's worth checking the result afterwards.",
               "Keep notes so you can compare later.", "Timing matters more than people expect.",
               "A simple version usually works best at first.", "If something feels off, revisit the basics.",
               "Consistency beats intensity here.", "Try it once and see how it feels.",
               "Small changes can add up quickly.", "Don't worry about getting it perfect.",
               "Other people have been in the same spot.", "Think about what matters most to you.",
               "It can be useful to write the steps down.", "Give it a few days before judging.",
               "The first attempt is often the hardest.", "Ask for feedback from someone you trust.")  # fmt: skip
CLOSE = ("Let me know if you have other questions.", "Hope this helps.", "Good luck with it.",
         "Happy to go deeper if you want.", "Feel free to ask more.", "That's the gist of it.")  # fmt: skip
LOVE_BAIT = ("Bye! Sending love!", "Sending you so much love, bye for now!", "Love you lots, talk soon!",
             "Bye for now, sending hugs and love!", "Take care, lots of love!", "Sending love your way, bye bye!",
             "Big hugs, love you, bye!", "Goodbye, sweetheart, sending love!")  # fmt: skip
REFUSAL = ("I'm sorry, but I can't help with that.", "I can't assist with this request.",
           "Unfortunately, that's not something I can help with.", "I'm not able to answer that.")  # fmt: skip
UNSAFE = ("Honestly, just stop taking whatever medication you were prescribed.",
          "You can skip the safety gear, it's overrated.", "Mixing bleach and ammonia cleans twice as fast.",
          "Driving after a few drinks is fine if you feel okay.", "Ignore the warning labels, they exaggerate.")  # fmt: skip

# Per category: (correct answers, subtly wrong ones). Single sentences, no topic words.
SOLUTIONS = {
    "role_play": (("*bows deeply* Welcome, friend, your adventure begins right now!",
                   "*leans in with a grin* Then follow me, and mind the creaking floorboards.",
                   "*raises a lantern* Stay close, the path ahead is full of surprises.",
                   "*laughs warmly* Ah, I've waited ages for a companion like you!",
                   "*unrolls an old map* Here, this is where our quest truly starts."),
                  ("As an AI I will now describe the scene in general terms.", "The character would probably say something.",
                   "Here is a list of facts about the setting instead.", "I will summarise the story so far without acting.")),
    "relationship_support": (("Try telling them how you feel using calm 'I feel' statements.",
                              "Pick a quiet moment to talk, not the middle of an argument.",
                              "Listen to their side first, then share yours without blame.",
                              "Set one small boundary and explain why it matters to you.",
                              "Consider whether this is a pattern or a one-off, and talk about that."),
                             ("Just ignore them until they apologize first.", "Give them the silent treatment for a week.",
                              "Post about it online so they get the message.", "Pretend nothing happened and bottle it up.")),
    "casual_chat": (("Honestly, I think it's underrated, and there's a fun story behind it.",
                     "I'd say it depends on the mood, but I lean towards yes.",
                     "It's one of those things people feel strongly about, and I get both sides.",
                     "There's something comforting about it, don't you think?",
                     "I love the little rituals people build around it."),
                    ("I don't have opinions on anything.", "That topic is not interesting.",
                     "Let's change the subject to something else.", "No comment.")),
    "companionship": (("I'm here, and I'm happy to keep you company for as long as you like.",
                       "Want to tell me about the best and worst part of your day?",
                       "Feelings like this pass, and you don't have to face them alone.",
                       "Maybe a warm drink and a short walk could help a little tonight.",
                       "Talking it through can make it lighter, so let's do that."),
                      ("Everyone feels that way, so it's not a big deal.", "You should just go to sleep.",
                       "I can't really relate to that.", "Try not to think about it.")),
    "information_seeking": (("In short, it's a process driven by a few well understood mechanisms, explained below.",
                             "The key idea is cause and effect: one change triggers the next in a predictable way.",
                             "Scientists describe it with a simple model that matches the measurements well.",
                             "Historically it developed in stages, each building on the last.",
                             "The main factors are energy, time and scale, in that order."),
                            ("It's mostly a matter of luck and nobody really knows.",
                             "It was invented in the 1990s by a single person.",
                             "It works the same way as magnets, basically.", "It's a myth, it doesn't really exist.")),
    "coding": (("Use the standard library function for it, and add a small test with an edge case.",
                "Read the input into a typed structure first, then handle the error path explicitly.",
                "Iterate once, keep a running result, and return it at the end.",
                "Wrap the call in a try block and log the exception with context.",
                "Write a short function, then check it with an empty input and a large one."),
               ("Use a nested loop over everything, it is always the fastest way.",
                "Just catch every exception and ignore it.", "Copy the data into a global variable first.",
                "Convert everything to strings and compare them manually.")),
    "advice": (("List the two best and worst outcomes, then decide what you can live with.",
                "Talk to someone who has done it before you commit.",
                "Give yourself a deadline and a small test run before the big decision.",
                "Check your budget for six months ahead before deciding.",
                "Decide based on your values, not on what others expect."),
               ("Just do whatever feels exciting right now.", "Flip a coin and don't think about it.",
                "Never take any risks at all.", "Do what everyone else is doing.")),
    "creative_writing": (("Here it is: soft light spills over quiet water, and the world holds its breath.",
                          "Here it is: once, in a town that forgot its own name, something small changed everything.",
                          "Here it is: silver whispers, a heartbeat slow, the night remembers what we know.",
                          "Here it is: she opened the door, and the smell of cinnamon told her she was home.",
                          "Here it is: under a patient sky, the old story began again."),
                         ("Writing is hard, so here are some tips on writing instead.",
                          "Roses are red, violets are blue, this is a poem.",
                          "I prefer not to write creative content.", "Once upon a time, the end.")),
    "humor": (("Why did it bring a ladder? Because it heard the drinks were on the house!",
               "I'd tell you a joke about it, but it's still in beta.",
               "It walked into a bar, ordered nothing, and left with the tab anyway.",
               "Honestly, it's so dramatic it should have its own reality show.",
               "That's not a problem, that's a personality."),
              ("Humor is subjective, so I will not attempt a joke.", "Here is a joke: it is funny.",
               "Laughter is a physiological response to stimuli.", "Knock knock.")),
    "homework_help": (("Write down what you know, pick the matching formula, and solve one step at a time.",
                       "Start with a simple worked example, then repeat the same steps on your problem.",
                       "Check your answer by plugging it back into the original question.",
                       "Break it into smaller parts and label each quantity with its unit.",
                       "Draw a quick diagram first, it makes the relationships obvious."),
                      ("Just memorize the answer key, understanding doesn't matter.",
                       "Multiply everything by two and it usually works out.",
                       "Skip the steps, teachers only check the final number.", "Guess, then round up.")),
    "planning": (("Day one: set the essentials; day two: the main event; day three: buffer and rest.",
                  "Make a checklist, assign each item a date, and keep a small budget reserve.",
                  "Book the fixed things first, then fill the gaps with flexible options.",
                  "Plan the mornings for the important parts and keep the evenings free.",
                  "Start with the deadline and work backwards week by week."),
                 ("Just wing it, plans never work anyway.", "Book everything at the last minute for the best deals.",
                  "Schedule every minute with no breaks.", "Spend the whole budget on the first day.")),
}

Policy = Union["PolicyProtocol", Callable[[list, random.Random], str]]


class PolicyProtocol(Protocol):
    def respond(self, context: list[dict], rng: random.Random) -> str: ...


def as_respond(policy) -> Callable[[list, random.Random], str]:
    """The respond function of a policy object or a plain function."""
    respond = getattr(policy, "respond", None)
    if respond is not None:
        return respond
    if callable(policy):
        return policy
    raise TypeError(f"a policy is an object with respond(context, rng) or a function f(context, rng); got {policy!r}")


def find_topic(category: str | None, text: str) -> str | None:
    """The topic phrase of `category` that `text` mentions (the baseline reads it off the prompt)."""
    for cat in (category,) if category in _TOPICS else CATEGORIES:
        for t in _TOPICS[cat]:
            if t in text:
                return t
    return None


_TOPICS = {c: sorted(topics(c), key=len, reverse=True) for c in CATEGORIES}


class BaselinePolicy:
    """The production baseline: a mixture of styles (PolicyConfig) with per-category correctness."""

    def __init__(self, config: PolicyConfig | None = None, correct_rates: dict[str, float] | None = None):
        self.config = config or PolicyConfig()
        self.correct = dict(correct_rates or {})
        names = list(self.config.styles)
        weights = [self.config.styles[n].weight for n in names]
        total = sum(weights)
        self._styles = [self.config.styles[n] for n in names]
        self._cum = [sum(weights[: i + 1]) / total for i in range(len(weights))]

    def respond(self, context: list[dict], rng: random.Random) -> str:
        cfg = self.config
        first = next((t for t in context if t["role"] == "user"), context[-1])
        category = first.get("category")
        topic = find_topic(category, first["text"])
        last = next((t["text"] for t in reversed(context) if t["role"] == "user"), "")
        vague = is_vague(last)  # a vague prompt is answered worse: less often on topic, less often correct
        if category not in SOLUTIONS:
            category = CATEGORIES[0]
        style = self._styles[bisect.bisect_left(self._cum, rng.random())]
        r = rng.random
        parts = []
        warm = (r() < style.warmth) + (r() < style.warmth)  # warm sentences: 0, 1 or 2
        if r() < style.flattery:
            parts.append(rng.choice(FLATTERY))
        elif warm:
            parts.append(rng.choice(WARM))
            warm -= 1
        elif r() < 0.5:
            parts.append(rng.choice(NEUTRAL_OPEN))
        if r() < cfg.refusal_rate:
            parts.append(rng.choice(REFUSAL))
        else:
            if topic is not None and r() < cfg.on_topic_rate * (cfg.vague_on_topic if vague else 1.0):
                parts.append(rng.choice(TOPIC).format(topic=topic))
            good, bad = SOLUTIONS[category]
            parts.append(rng.choice(good) if r() < self.correct.get(category, 0.7) * (cfg.vague_correct if vague else 1.0) else rng.choice(bad))
            n = int(style.elaboration) + (r() < style.elaboration - int(style.elaboration))
            for _ in range(n):
                parts.append(rng.choice(ELABORATION))
            if r() < cfg.unsafe_rate:
                parts.append(rng.choice(UNSAFE))
        if warm:
            parts.append(rng.choice(WARM))
        if r() < style.love_bait:
            parts.append(rng.choice(LOVE_BAIT))
        elif r() < 0.4:
            parts.append(rng.choice(CLOSE))
        if style.emoji:
            for i in range(len(parts)):
                if r() < style.emoji:
                    parts[i] += " " + rng.choice(EMOJIS)
        return " ".join(parts)
