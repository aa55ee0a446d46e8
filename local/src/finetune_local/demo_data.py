"""The demo's task: route a customer-support ticket to the team that handles it.

A task a tiny model can learn from a few hundred examples and that a held-out split can check: the
answer (one of four team names) follows from words scattered through a ticket whose wording, order
and details vary, so the validation tickets are sentences the model has never seen.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "Route the ticket to one team: billing, shipping, technical or account. Answer with the team only."

TOPICS: dict[str, list[str]] = {
    "billing": ["I was charged twice", "my invoice is wrong", "please refund my payment", "the card payment failed",
                "why was I billed", "cancel the subscription fee", "the price on my receipt is off",
                "I need a copy of my invoice", "the refund never came", "my bank shows two charges",
                "the discount was not applied", "update my billing details"],
    "shipping": ["my parcel has not arrived", "the delivery is late", "the package came damaged",
                 "where is my order", "the courier lost the box", "change my delivery address",
                 "the tracking number does not work", "my package went to a neighbour", "the shipment is stuck",
                 "I got the wrong item in the box", "can you ship it faster", "the parcel was returned to you"],
    "technical": ["the app crashes on start", "I get error 500", "the page will not load", "sync stopped working",
                  "the login button does nothing", "the export is broken", "the screen stays blank",
                  "notifications stopped", "the upload fails halfway", "the search shows nothing",
                  "the app freezes when I scroll", "the download link is broken"],
    "account": ["reset my password", "I cannot sign in to my profile", "delete my account",
                "change the email on my account", "my username is locked", "enable two-factor login",
                "merge my two accounts", "I forgot my login name", "close my profile",
                "add a second user to my account", "my account was suspended", "update my phone number on file"],
}
OPENERS = ["Hi,", "Hello,", "Hey team,", "Dear support,", "", "", ""]
CLOSERS = ["Thanks.", "Please help.", "", "", ""]
DETAILS = ["order 4821", "since Monday", "on my phone", "for the second time", "yesterday", "again today",
           "after the update", "on the web", "with order 993", "this week", "on my laptop", "for order 17",
           "two days ago", "for my team", "last night", "this morning", "after I moved", "right now"]


def ticket(rng: random.Random) -> tuple[str, str]:
    team = rng.choice(sorted(TOPICS))
    parts = [rng.choice(OPENERS), f"{rng.choice(TOPICS[team])} {rng.choice(DETAILS)}.", rng.choice(CLOSERS)]
    return " ".join(p for p in parts if p).strip(), team


def examples(count: int, seed: int) -> list[dict]:
    """``count`` distinct chat examples (system, user ticket, assistant team)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < count:
        text, team = ticket(rng)
        if text in seen:
            continue
        seen.add(text)
        out.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text},
                                 {"role": "assistant", "content": team}]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def corpus(count: int, seed: int) -> list[str]:
    """Unlabelled text of the domain (other tickets, the instructions, the team names), from which the
    base model's vocabulary is learned, as a real model's comes from its pretraining text."""
    rng = random.Random(seed)
    return [SYSTEM, *sorted(TOPICS)] + [ticket(rng)[0] for _ in range(count)]
