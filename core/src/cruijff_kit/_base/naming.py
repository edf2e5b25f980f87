"""Deterministic, readable run names: ``<adjective>-<noun>-<hash6>`` from the resolved run spec."""

from __future__ import annotations

import hashlib
import json
from typing import Any

ADJECTIVES = ["amber", "azure", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "curious", "daring", "eager", "early", "fancy", "fierce", "gentle", "glad", "golden", "grand", "happy", "hardy", "honest", "humble", "jolly", "keen", "kind", "lively", "lucky", "merry", "mighty", "misty", "modest", "noble", "polite", "proud", "quick", "quiet", "rapid", "rosy", "royal", "rustic", "shiny", "silent", "silver", "sleek", "smart", "snowy", "solid", "spicy", "steady", "stormy", "sunny", "swift", "tidy", "tender", "upbeat", "vivid", "warm", "wild", "wise", "witty", "young", "zesty", "plucky"]
NOUNS = ["otter", "falcon", "badger", "heron", "lynx", "panda", "koala", "raven", "tiger", "whale", "zebra", "beaver", "bison", "camel", "cobra", "crane", "dingo", "eagle", "ferret", "gecko", "goose", "hare", "ibis", "jackal", "lemur", "llama", "marten", "moose", "newt", "ocelot", "orca", "owl", "parrot", "pelican", "puffin", "quail", "rabbit", "robin", "salmon", "seal", "shark", "sloth", "snail", "sparrow", "squid", "stork", "swan", "tapir", "toucan", "trout", "turtle", "viper", "walrus", "wombat", "yak", "marmot", "mole", "finch", "kiwi"]


def spec_hash(spec: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of a resolved run spec."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def run_name(spec: dict[str, Any]) -> str:
    """The same resolved spec always gives the same name; a changed spec gives a new one."""
    digest = spec_hash(spec)
    n = int(digest[:16], 16)
    return f"{ADJECTIVES[n % len(ADJECTIVES)]}-{NOUNS[(n // len(ADJECTIVES)) % len(NOUNS)]}-{digest[:6]}"
