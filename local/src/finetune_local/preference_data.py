"""A preference a tiny model can learn: answer in the case the user asks for.

Each prompt asks the assistant to say a short phrase, either shouting (``Shout: ...``, upper case wanted) or
whispering (``Whisper: ...``, lower case wanted), with a varying opener. A preference pair's preferred answer repeats the words in
the case asked for, its non-preferred answer in the other case: the same letters, so a model that has not
learned the rule ranks a pair by its own bias between the cases, and since half the prompts ask for each case
it ranks about half of them right. Supervised conversations of the same task answer in either case at random,
so a model fine-tuned on them says the phrase but does not follow the instruction: DPO after it teaches the
preference. ``follows_instruction`` is the rule a judge of this task applies.
"""

from __future__ import annotations

import random

PHRASES = [
    "good morning", "thank you", "see you soon", "well done", "happy birthday", "good night", "welcome back",
    "take care", "nice to meet you", "good luck", "have a nice day", "congratulations",
]  # fmt: skip
OPENERS = ["", "Hi!", "Please", "Now", "Quick,", "Go on,", "Hey,", "Ready?"]


def _request(rng: random.Random) -> tuple[str, str, bool]:
    """(prompt, the phrase, upper case wanted)."""
    phrase = rng.choice(PHRASES)
    upper = rng.random() < 0.5
    opener = rng.choice(OPENERS)
    return f"{opener} {'Shout' if upper else 'Whisper'}: {phrase}".strip(), phrase, upper


def preference_pairs(count: int, seed: int) -> list[dict]:
    """``count`` preference examples (Together's shape): the words in the case asked for are preferred."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, phrase, upper = _request(rng)
        wanted, other = (phrase.upper(), phrase) if upper else (phrase, phrase.upper())
        rows.append({
            "input": {"messages": [{"role": "user", "content": prompt}]},
            "preferred_output": [{"role": "assistant", "content": wanted}],
            "non_preferred_output": [{"role": "assistant", "content": other}],
        })  # fmt: skip
    return rows


def conversations(count: int, seed: int, follow: float = 0.5) -> list[dict]:
    """``count`` chat examples of the same task whose answers say the phrase in the case asked for with
    probability ``follow``, else in the other case."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt, phrase, upper = _request(rng)
        answer = phrase.upper() if upper == (rng.random() < follow) else phrase
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    return rows


def follows_instruction(prompt: str, answer: str) -> bool | None:
    """Whether ``answer`` is in the case ``prompt`` asks for (most of its letters); None for a prompt of another task."""
    wanted = "upper" if "Shout:" in prompt else "lower" if "Whisper:" in prompt else None
    if wanted is None:
        return None
    letters = [c for c in answer if c.isalpha()]
    if not letters:
        return False
    upper = sum(c.isupper() for c in letters)
    return upper * 2 > len(letters) if wanted == "upper" else upper * 2 < len(letters)


def corpus() -> list[str]:
    """Text of the task's domain, from which a tiny base model's vocabulary is learned."""
    return ["Shout:", "Whisper:", *OPENERS, *PHRASES, *(p.upper() for p in PHRASES)]
