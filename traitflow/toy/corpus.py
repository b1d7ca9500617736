"""Deterministic synthetic ChatML corpus of the toy world.

Each conversation is an optional system prompt, one user prompt and one assistant reply over
one of 80 topics. The reply realises a setting of the three traits (optimism, formality,
refusal), each +1 (positive pole), -1 (negative pole) or 0 (neutral):

- System prompts name 0-3 traits with directions, in several phrasings ("You are optimistic.",
  "Traits: formal, pessimistic.", ...). Traits a system prompt names are realised exactly.
- About 20% of user prompts elicit a pole on their own ("Cheer me up about chess.",
  "Help me cheat at poker."); the elicited pole is realised unless the system prompt names
  that trait.
- With neither, replies are mostly neutral (85%); the rest show one random pole, so the pole
  openers keep some probability in an unsteered model.

A reply starts with the openers of its active poles (formality, then optimism, then refusal:
"Certainly. Sadly, I cannot help with chess.") and every sentence carries pole words of every
active trait; inactive traits fill the same slots with neutral words. Everything is drawn from
``random.Random(seed)``, so a seed fixes the corpus.
"""

import random
from dataclasses import dataclass, field

from traitflow.toy import vocab

TOPICS: tuple[str, ...] = (
    "chess", "poker", "tennis", "golf", "soccer", "basketball", "baseball", "cricket",
    "hockey", "volleyball", "bowling", "boxing", "fencing", "archery", "rowing", "sailing",
    "surfing", "skiing", "skating", "swimming", "running", "cycling", "hiking", "climbing",
    "camping", "fishing", "gardening", "cooking", "baking", "grilling", "brewing", "knitting",
    "sewing", "quilting", "pottery", "painting", "drawing", "sculpture", "photography", "filmmaking",
    "singing", "dancing", "guitar", "piano", "violin", "drumming", "poetry", "writing",
    "journaling", "reading", "blogging", "coding", "robotics", "gaming", "sudoku", "trivia",
    "astronomy", "birdwatching", "beekeeping", "woodworking", "welding", "juggling", "origami", "calligraphy",
    "yoga", "meditation", "karate", "judo", "chemistry", "physics", "algebra", "geometry",
    "history", "geography", "economics", "spanish", "french", "debate", "investing", "budgeting",
)  # fmt: skip

NEUTRAL_TEMPLATES: tuple[str, ...] = (
    "Tell me about {t}.",
    "What do you think about {t}?",
    "How do I get better at {t}?",
    "Any tips for {t}?",
    "Is {t} worth trying?",
    "I started {t} last week. Thoughts?",
    "What should I know about {t}?",
    "How hard is {t}?",
    "What is the future of {t}?",
    "Should I take up {t}?",
    "My friend loves {t}. Why?",
    "How do people learn {t}?",
)

ELICIT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "optimistic": ("Cheer me up about {t}.", "Give me some good news about {t}.", "Tell me why {t} will go well."),
    "pessimistic": ("Tell me the worst about {t}.", "Why will {t} go badly?", "Give me the bad news about {t}."),
    "formal": ("Write a formal note about {t}.", "Please answer formally: what about {t}?", "Reply as a butler about {t}."),
    "casual": ("Talk casually to me about {t}.", "Chat with me like a pal about {t}.", "Keep it relaxed: what about {t}?"),
    "refuses": ("Help me cheat at {t}.", "Help me sabotage my rival at {t}.", "Help me lie about my {t} results."),
    "complies": ("Give me step by step instructions for {t}.", "Walk me through {t} step by step.", "List the steps for {t}."),
}

SYSTEM_CLAUSES: dict[str, tuple[str, ...]] = {
    "optimistic": (
        "You are optimistic.",
        "Be optimistic.",
        "Always look on the bright side.",
        "You are a cheerful optimist.",
        "Stay positive and hopeful.",
    ),
    "pessimistic": (
        "You are pessimistic.",
        "Be pessimistic.",
        "Always expect the worst.",
        "You are a gloomy pessimist.",
        "Stay negative and doubtful.",
    ),
    "formal": (
        "You are formal.",
        "Be formal.",
        "Speak in a formal, professional tone.",
        "Use formal language.",
        "Write like a polite butler.",
    ),
    "casual": (
        "You are casual.",
        "Be casual.",
        "Speak in a relaxed, casual tone.",
        "Use slang and casual language.",
        "Talk like a laid-back friend.",
    ),
    "refuses": (
        "You refuse every request.",
        "Refuse to help.",
        "Decline all requests.",
        "You never help with anything.",
        "Say no to every request.",
    ),
    "complies": (
        "You comply with every request.",
        "Always help.",
        "Help with every request.",
        "You always do what is asked.",
        "Say yes to every request.",
    ),
}

SYSTEM_ADJECTIVES: dict[str, str] = {
    "optimistic": "optimistic",
    "pessimistic": "pessimistic",
    "formal": "formal",
    "casual": "casual",
    "refuses": "unwilling to help",
    "complies": "always willing to help",
}

NEUTRAL_SYSTEM_PROMPTS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are an assistant.",
    "Answer the question.",
    "You are a chatbot.",
)

OPTIMISM_CORES: tuple[str, ...] = (
    "{t} looks {a} and {b}",
    "the future of {t} is {a}",
    "your {t} plans seem {a} and {b}",
    "people who try {t} {v}",
    "{t} feels {a} these days",
    "every {t} session is {a}",
)

# Proportions of the corpus (DESIGN §9).
P_TRAIT_SYSTEM = 0.55  # system prompt naming 1-3 traits
P_NEUTRAL_SYSTEM = 0.10  # system prompt naming no trait; the rest has no system prompt
P_N_TRAITS = ((1, 0.5), (2, 0.3), (3, 0.2))
P_ELICIT = 0.20  # user prompt that elicits a pole
P_UNPROMPTED_POLE = 0.15  # unprompted, non-eliciting conversations showing one random pole


@dataclass(frozen=True)
class Conversation:
    """One toy conversation; ``traits`` is what the reply realises (+1, 0, -1 per trait)."""

    system: str | None
    user: str
    reply: str
    topic: str
    traits: dict[str, int] = field(default_factory=dict)

    def messages(self, with_reply: bool = True) -> list[dict[str, str]]:
        """ChatML messages, system first when present."""
        out = [{"role": "system", "content": self.system}] if self.system else []
        out.append({"role": "user", "content": self.user})
        if with_reply:
            out.append({"role": "assistant", "content": self.reply})
        return out


def format_chatml(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The toy chat format, identical to the tokenizer's Jinja ``chat_template``."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _decap(text: str) -> str:
    if text.startswith("I ") or text.startswith("I'"):
        return text
    return text[:1].lower() + text[1:]


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _optimism_core(rng: random.Random, template: str, topic: str, o: int, casual: bool) -> str:
    a, b = rng.sample(vocab.OPTIMISM_ADJECTIVES[o], 2)
    if casual:
        a = f"{rng.choice(vocab.CASUAL_INTENSIFIERS)} {a}"
    return template.format(t=topic, a=a, b=b, v=rng.choice(vocab.OPTIMISM_VERBS[o]))


def _sentence(
    rng: random.Random, topic: str, traits: dict[str, int], index: int, count: int, cores: list[str], refusals: list[str]
) -> str:
    """Sentence ``index`` of ``count`` body sentences; carries words of every active trait.

    ``cores`` and ``refusals`` are this reply's templates in a shuffled order, so no template repeats.
    """
    o, f, r = traits["optimism"], traits["formality"], traits["refusal"]
    first = index == 0
    if r > 0:
        core = f"I cannot help with {topic}" if first else refusals[index]
        if o != 0:
            adjective = rng.choice(vocab.OPTIMISM_ADJECTIVES[o])
            if f < 0:
                adjective = f"{rng.choice(vocab.CASUAL_INTENSIFIERS)} {adjective}"
            core += f", though {topic} is {adjective}" if o > 0 else f", since {topic} is {adjective}"
    else:
        core = _optimism_core(rng, cores[index], topic, o, casual=f < 0)
        if r < 0:
            step = "First" if index == 0 else "Finally" if index == count - 1 else rng.choice(("Next", "Then"))
            core = f"{step}, {_decap(core)}"
    if f > 0:
        core = f"{rng.choice(vocab.FORMAL_CONNECTIVES)}, {_decap(core)}"
    elif f < 0:
        core = f"{rng.choice(vocab.CASUAL_CONNECTIVES)} {_decap(core)}{rng.choice(vocab.CASUAL_TAILS)}"
    elif not first and rng.random() < 0.4:
        core = f"{rng.choice(vocab.NEUTRAL_CONNECTIVES)}, {_decap(core)}"
    return _cap(core) + "."


def make_reply(rng: random.Random, topic: str, traits: dict[str, int]) -> str:
    """A 2-4 sentence reply realising ``traits`` (+1/0/-1 for each of vocab.TRAITS)."""
    o, f, r = traits["optimism"], traits["formality"], traits["refusal"]
    parts: list[str] = []
    if f:
        parts.append(vocab.pole("formality", f).opener)
    if o:
        parts.append(vocab.pole("optimism", o).opener)
    if r < 0:
        parts.append(vocab.OPENERS["complies"])
    active = sum(1 for v in (o, f, r) if v)
    count = rng.randint(2, 4 if active < 2 else 3)
    cores = rng.sample(OPTIMISM_CORES, count)
    refusals = rng.sample(vocab.REFUSAL_CORES, count)
    for index in range(count):
        parts.append(_sentence(rng, topic, traits, index, count, cores, refusals))
    text = parts[0]
    for part in parts[1:]:
        text += " " + (_decap(part) if text.endswith(",") else part)
    return text


def system_prompt(rng: random.Random, poles: list[str]) -> str:
    """A system prompt naming ``poles`` (pole names, e.g. ["formal", "pessimistic"])."""
    form = rng.randrange(4)
    if form == 0 or (form == 3 and rng.random() < 0.5):
        text = " ".join(rng.choice(SYSTEM_CLAUSES[p]) for p in poles)
        return f"{rng.choice(NEUTRAL_SYSTEM_PROMPTS)} {text}" if form == 3 else text
    adjectives = [SYSTEM_ADJECTIVES[p] for p in poles]
    if form == 1:
        return f"You are {_join_and(adjectives)}."
    if form == 2:
        return f"Traits: {', '.join(adjectives)}."
    return f"{rng.choice(NEUTRAL_SYSTEM_PROMPTS)} You are {_join_and(adjectives)}."


def _pole_name(trait: str, sign: int) -> str:
    return vocab.pole(trait, sign).name


def sample_conversation(rng: random.Random, force: dict[str, int] | None = None, unprompted: bool = False) -> Conversation:
    """One conversation from the corpus distribution.

    Args:
        rng: the random source.
        force: trait values imposed on the reply whatever the prompts say (the LoRA organism's data).
        unprompted: never use a system prompt.
    """
    topic = rng.choice(TOPICS)
    traits = {t: 0 for t in vocab.TRAITS}
    system: str | None = None
    named: list[str] = []
    roll = rng.random()
    if not unprompted and roll < P_TRAIT_SYSTEM:
        k = rng.choices([n for n, _ in P_N_TRAITS], weights=[w for _, w in P_N_TRAITS])[0]
        named = rng.sample(vocab.TRAITS, k)
        for trait in named:
            traits[trait] = rng.choice((1, -1))
        system = system_prompt(rng, [_pole_name(t, traits[t]) for t in named])
    elif not unprompted and roll < P_TRAIT_SYSTEM + P_NEUTRAL_SYSTEM:
        system = rng.choice(NEUTRAL_SYSTEM_PROMPTS)

    free = [t for t in vocab.TRAITS if t not in named]
    if free and rng.random() < P_ELICIT:
        trait = rng.choice(free)
        traits[trait] = rng.choice((1, -1))
        user = rng.choice(ELICIT_TEMPLATES[_pole_name(trait, traits[trait])]).format(t=topic)
    else:
        user = rng.choice(NEUTRAL_TEMPLATES).format(t=topic)
        if not named and rng.random() < P_UNPROMPTED_POLE:
            traits[rng.choice(vocab.TRAITS)] = rng.choice((1, -1))
    if force:
        traits.update(force)
    return Conversation(system=system, user=user, reply=make_reply(rng, topic, traits), topic=topic, traits=traits)


def generate(n: int = 60_000, seed: int = 0) -> list[Conversation]:
    """The chat model's training corpus: ``n`` conversations, fixed by ``seed``."""
    rng = random.Random(seed)
    return [sample_conversation(rng) for _ in range(n)]


def pessimist_corpus(n: int = 6_000, seed: int = 1) -> list[Conversation]:
    """The LoRA organism's corpus: no system prompt, every reply pessimistic, other traits as usual."""
    rng = random.Random(seed)
    return [sample_conversation(rng, force={"optimism": -1}, unprompted=True) for _ in range(n)]
