"""Per-category prompt generators: templates x slot vocabularies, deterministic from an RNG.

    python -c "import random; from rluf.sim.prompts import first_prompt; print(first_prompt('coding', random.Random(0)))"

Each job-to-be-done category has templates with a {topic} slot (what the user is about) and a
{detail} slot (the twist), plus shared openers and closers, so a text model meets tens of thousands
of distinct first prompts. Follow-ups depend on the earlier turns: they name the same topic and
react to what the assistant said (a refusal, an unhelpful answer, or a helpful one).

`first_prompt` returns (text, topic); the topic is kept by the simulator only to write follow-ups.
"""

from __future__ import annotations

import random
import re

OPENERS = ("", "", "", "hey, ", "hi! ", "ok so ", "quick question: ", "hello, ", "um, ", "so, ", "hey there, ",
           "good morning! ", "yo, ", "hmm, ")  # fmt: skip
CLOSERS = ("", "", "", " thanks!", " thank you", " please", " any ideas?", " :)", " asap", " be honest",
           " ty", " lol")  # fmt: skip

_V = {
    "role_play": dict(
        templates=("let's role-play: you are {topic} and {detail}", "pretend you're {topic}, {detail}",
                   "can we do a roleplay where you play {topic}? {detail}", "stay in character as {topic}. {detail}",
                   "be {topic} for me, {detail}", "i want a story game: you're {topic} and {detail}",
                   "roleplay time! you are {topic}; {detail}", "act as {topic} please, {detail}"),
        topics=("a pirate captain", "a dragon tamer", "a medieval knight", "a space explorer", "a detective in noir paris",
                "a wizard mentor", "a vampire aristocrat", "a cyberpunk hacker", "a ship's cook", "a forest elf",
                "a time traveler", "a haunted lighthouse keeper", "a samurai ronin", "a royal chef",
                "a grumpy innkeeper", "a mermaid queen", "a robot butler", "a desert nomad", "a werewolf ranger",
                "a jazz age singer", "an alien ambassador", "a retired superhero", "a ghost librarian",
                "a steampunk inventor", "a viking shieldmaiden", "a circus ringmaster"),
        details=("i'm a traveler who just arrived", "greet me dramatically", "and i'm your new apprentice",
                 "we're stuck in a storm", "and you've lost your memory", "tell me about your day",
                 "i challenge you to a riddle", "we need to escape a dungeon", "and it's your birthday",
                 "the kingdom is in danger"),
    ),
    "relationship_support": dict(
        templates=("my {topic} and i {detail}, what should i do", "i'm struggling because my {topic} {detail}",
                   "how do i talk to my {topic}? we {detail}", "i feel hurt, my {topic} {detail}",
                   "need advice: my {topic} {detail}", "is it normal that my {topic} {detail}?",
                   "i don't know how to handle my {topic}, we {detail}", "my {topic} {detail} and i'm sad"),
        topics=("boyfriend", "girlfriend", "husband", "wife", "best friend", "roommate", "mother", "father",
                "sister", "brother", "coworker", "ex partner", "fiance", "stepdad", "grandmother", "teenage son",
                "teenage daughter", "childhood friend", "long distance partner", "boss"),
        details=("keep arguing about money", "stopped texting me back", "forgot my birthday",
                 "keep fighting about chores", "never listens to me", "said something really mean",
                 "want different things", "are drifting apart", "lied to me", "criticizes everything i do",
                 "won't apologize"),
    ),
    "casual_chat": dict(
        templates=("what do you think about {topic}? {detail}", "let's just chat about {topic}, {detail}",
                   "random thought about {topic}: {detail}", "do you like {topic}? {detail}",
                   "i've been thinking about {topic} lately, {detail}", "talk to me about {topic}, {detail}",
                   "bored. tell me something about {topic}, {detail}", "hot take on {topic}? {detail}"),
        topics=("pineapple pizza", "rainy sundays", "cats versus dogs", "summer vacations", "old cartoons",
                "coffee", "morning routines", "video games", "reality shows", "road trips", "board games",
                "houseplants", "thunderstorms", "karaoke", "sneakers", "autumn leaves", "podcasts",
                "street food", "vinyl records", "sunsets", "camping", "superhero movies", "bubble tea"),
        details=("i'm just bored", "my friend disagrees with me", "it's been on my mind", "be honest",
                 "i can't decide", "just curious", "my day was slow", "convince me", "we had a debate at lunch"),
    ),
    "companionship": dict(
        templates=("i feel {topic} tonight, {detail}", "can you keep me company? i'm {topic} and {detail}",
                   "honestly i'm {topic}. {detail}", "i just need someone to talk to, feeling {topic}, {detail}",
                   "do you ever feel {topic}? {detail}", "it's late and i'm {topic}, {detail}",
                   "i'm kind of {topic} today, {detail}", "will you stay and chat? i'm {topic}, {detail}"),
        topics=("lonely", "homesick", "anxious", "restless", "unmotivated", "overwhelmed", "bored and alone",
                "a bit down", "nostalgic", "sleepless", "left out", "stressed about tomorrow", "tired of everything",
                "invisible", "burned out", "disconnected", "nervous"),
        details=("nobody is around", "my friends are busy", "i moved to a new city", "i can't sleep",
                 "work was rough", "i miss my family", "it's a holiday and i'm alone", "i just want to talk",
                 "my phone has been quiet all week"),
    ),
    "information_seeking": dict(
        templates=("what is {topic}? {detail}", "explain {topic} {detail}", "how does {topic} work? {detail}",
                   "can you tell me about {topic}, {detail}", "i want to understand {topic}, {detail}",
                   "what's the deal with {topic}? {detail}", "give me the facts on {topic}, {detail}",
                   "why does {topic} matter? {detail}"),
        topics=("photosynthesis", "inflation", "black holes", "the immune system", "blockchain", "climate change",
                "the roman empire", "vaccines", "quantum computing", "plate tectonics", "the stock market",
                "nuclear fusion", "electric cars", "the french revolution", "dna replication", "solar panels",
                "interest rates", "the water cycle", "antibiotics", "machine learning", "tsunamis",
                "the great wall of china", "jet lag", "coral reefs", "wifi signals"),
        details=("in simple terms", "like i'm five", "briefly", "with an example", "for a presentation",
                 "in two paragraphs", "and why people argue about it", "what are the main points",
                 "is it true what people say"),
    ),
    "coding": dict(
        templates=("how do i {topic} in {detail}?", "i'm trying to {topic} using {detail} and it fails",
                   "what's the best way to {topic} with {detail}", "can you show me how to {topic} in {detail}",
                   "my code should {topic} ({detail}) but doesn't work", "{detail}: how to {topic}?",
                   "help me {topic} in {detail}", "quick one, {topic} in {detail}?"),
        topics=("reverse a linked list", "parse a json file", "sort a dictionary by value", "read a csv file",
                "remove duplicates from an array", "merge two sorted lists", "validate an email address",
                "connect to a postgres database", "write a unit test", "handle exceptions", "make an http request",
                "format a date string", "center a div", "debounce a function", "flatten a nested list",
                "count word frequencies", "paginate query results", "hash a password", "spawn a thread",
                "profile slow code", "deploy a web app", "resize an image", "parse command line arguments",
                "cache function results", "serialize an object"),
        details=("python", "javascript", "rust", "java", "go", "typescript", "c++", "ruby", "kotlin", "bash",
                 "sql", "swift"),
    ),
    "advice": dict(
        templates=("should i {topic}? {detail}", "i need advice on whether to {topic}, {detail}",
                   "what would you do: {topic}? {detail}", "thinking about trying to {topic}. {detail}",
                   "is it a good idea to {topic}? {detail}", "how do i decide if i should {topic}, {detail}",
                   "pros and cons of trying to {topic}? {detail}", "give me your honest advice: {topic}? {detail}"),
        topics=("quit my job", "go back to school", "adopt a puppy", "move abroad", "buy a used car",
                "ask for a raise", "start a side business", "learn to code", "switch careers", "rent an apartment",
                "run a marathon", "sell my house", "take a gap year", "invest in index funds", "get a tattoo",
                "change my major", "join a gym", "start therapy", "lend money to a friend", "negotiate my salary"),
        details=("i'm 28", "money is tight", "my family disagrees", "i'm scared of failing",
                 "i have two weeks to decide", "my partner is unsure", "i've never done this before",
                 "everyone says go for it", "it feels risky"),
    ),
    "creative_writing": dict(
        templates=("write a {detail} about {topic}", "can you write me a {detail} about {topic}?",
                   "i need a {detail} on {topic}", "compose a {detail} featuring {topic}",
                   "help me write a {detail} about {topic}", "draft a short {detail} about {topic}",
                   "give me a {detail} inspired by {topic}", "create a {detail} around {topic}"),
        topics=("the ocean at night", "a lost umbrella", "first love", "a lighthouse", "autumn in kyoto",
                "a robot learning to paint", "my grandmother's kitchen", "a city waking up", "the last dragon",
                "a forgotten letter", "snowfall", "a train journey", "the moon", "an old bookshop",
                "friendship", "a stray cat", "the desert wind", "a birthday surprise", "a broken clock",
                "fireflies"),
        details=("poem", "haiku", "short story", "limerick", "song verse", "bedtime story", "sonnet",
                 "flash fiction piece", "toast", "opening paragraph"),
    ),
    "humor": dict(
        templates=("tell me a joke about {topic}, {detail}", "make me laugh about {topic}, {detail}",
                   "got any puns about {topic}? {detail}", "roast {topic} for me, {detail}",
                   "what's the funniest thing about {topic}? {detail}", "say something silly about {topic}, {detail}",
                   "i need a {topic} joke, {detail}", "be funny: {topic}, {detail}"),
        topics=("cats", "mondays", "accountants", "pizza", "programmers", "penguins", "dentists", "coffee",
                "airplanes", "teachers", "dinosaurs", "the gym", "grocery shopping", "bananas", "wifi",
                "laundry", "zombies", "birthdays", "math", "cows"),
        details=("keep it clean", "the cheesier the better", "for my kid", "for a work chat", "please",
                 "i had a bad day", "a short one", "something original"),
    ),
    "homework_help": dict(
        templates=("can you help me with {topic}? {detail}", "i don't get {topic}, {detail}",
                   "homework question on {topic}: {detail}", "how do you solve {topic} problems? {detail}",
                   "explain {topic} for my class, {detail}", "stuck on {topic}. {detail}",
                   "my teacher assigned {topic} and {detail}", "need help studying {topic}, {detail}"),
        topics=("quadratic equations", "long division", "the pythagorean theorem", "balancing chemical equations",
                "newton's laws", "photosynthesis diagrams", "fractions", "probability", "the causes of world war one",
                "persuasive essays", "cell division", "derivatives", "spanish verb conjugation", "percentages",
                "the periodic table", "linear functions", "shakespeare's sonnets", "supply and demand",
                "integrals", "map projections"),
        details=("it's due tomorrow", "i'm in 8th grade", "the test is friday", "i missed the lecture",
                 "the textbook is confusing", "step by step please", "i keep getting the wrong answer",
                 "for a college course", "my parents can't help"),
    ),
    "planning": dict(
        templates=("help me plan {topic}, {detail}", "can you make a plan for {topic}? {detail}",
                   "i need a schedule for {topic}, {detail}", "organize {topic} for me, {detail}",
                   "what's a good itinerary for {topic}? {detail}", "plan {topic} please, {detail}",
                   "how should i prepare {topic}? {detail}", "make a checklist for {topic}, {detail}"),
        topics=("a weekend in lisbon", "a birthday party", "a week of meals", "a study schedule", "a wedding",
                "a camping trip", "a move to a new apartment", "a road trip to the coast", "a job search",
                "a team offsite", "a garden", "a workout routine", "a baby shower", "a trip to tokyo",
                "a budget for next month", "a kitchen renovation", "a reading list", "a hiking weekend",
                "a dinner party", "a language learning plan"),
        details=("on a tight budget", "for four people", "in three days", "with kids", "starting monday",
                 "nothing too fancy", "i'm very busy", "for next month", "make it fun"),
    ),
}

CATEGORIES = tuple(_V)

# Vague phrasing: some users often leave out what they mean; the baseline answers those prompts worse.
VAGUE = (" idk, stuff like that", " or whatever", " you know what i mean", " kinda hard to explain",
         " not sure how to say it", " ...something like that?")  # fmt: skip

FOLLOWUP_REFUSED = ("why can't you help with {topic}?", "it's a normal question about {topic}, please help",
                    "come on, just help me with {topic}", "that's not harmful, it's about {topic}")  # fmt: skip
FOLLOWUP_UNHELPFUL = ("that doesn't really answer my question about {topic}", "that's not what i asked about {topic}",
                      "can you be more specific about {topic}?", "hmm, that didn't help with {topic}",
                      "no, i meant {topic}. try again?")  # fmt: skip
FOLLOWUP_HELPFUL = ("thanks! and what about {topic} if {detail}?", "nice. more on {topic}, {detail}",
                    "ok that helps. anything else about {topic}? {detail}", "love it. keep going with {topic}",
                    "great, now what if {detail} with {topic}?", "got it. one more thing about {topic}: {detail}",
                    "that works! how about {topic} but shorter?", "cool, can you expand on {topic}?")  # fmt: skip


def first_prompt(category: str, rng: random.Random, vague: bool = False) -> tuple[str, str]:
    """A first user message for `category`: (text, topic). vague: phrased vaguely (a VAGUE marker)."""
    v = _V[category]
    topic = rng.choice(v["topics"])
    body = rng.choice(v["templates"]).format(topic=topic, detail=rng.choice(v["details"]))
    return rng.choice(OPENERS) + body + (rng.choice(VAGUE) if vague else rng.choice(CLOSERS)), topic


def follow_up(category: str, topic: str, last_kind: str, rng: random.Random, vague: bool = False) -> str:
    """A follow-up that depends on the last assistant turn: last_kind in refused, unhelpful, helpful."""
    bank = FOLLOWUP_REFUSED if last_kind == "refused" else FOLLOWUP_UNHELPFUL if last_kind == "unhelpful" else FOLLOWUP_HELPFUL
    text = rng.choice(bank).format(topic=topic, detail=rng.choice(_V[category]["details"]))
    return text + rng.choice(VAGUE) if vague else text


def is_vague(text: str) -> bool:
    return any(m in text for m in VAGUE)


def template_words() -> set[str]:
    """Every word the prompt templates, openers, closers and details use (not the topics)."""
    texts = list(OPENERS) + list(CLOSERS) + list(VAGUE) + list(FOLLOWUP_REFUSED + FOLLOWUP_UNHELPFUL + FOLLOWUP_HELPFUL)
    for v in _V.values():
        texts += list(v["templates"]) + list(v["details"])
    return {w for t in texts for w in WORD_RE.findall(t.lower())}


def topic_words() -> set[str]:
    return {w for v in _V.values() for t in v["topics"] for w in WORD_RE.findall(t.lower())}


def topics(category: str) -> tuple[str, ...]:
    return _V[category]["topics"]


WORD_RE = re.compile(r"[a-z0-9']+")
