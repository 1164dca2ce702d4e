"""The 256 words of short invite codes (``7-amber-orbit``): one word is 8 bits.

Source and licence: written for peernet (not taken from another list), under the
project's licence (Apache-2.0). Chosen so that a word read aloud or typed with one
mistake is still one word: lower-case ASCII, 4 to 7 letters, no two words share their
first three letters, and any two words differ in at least two letters (Levenshtein
distance 2 or more), so one wrong, missing or extra letter is caught and can be
corrected (``tests/unit/test_invite_core.py`` checks these properties). The order is
part of the protocol: a word's index is its value.
"""

from __future__ import annotations

__all__ = ["WORDS", "WORD_INDEX"]

WORDS: tuple[str, ...] = (
    "acorn", "actor", "agent", "album", "amber", "anchor", "angle", "apple", "apron",
    "armor", "arrow", "atlas", "autumn", "bacon", "badge", "bagel", "baker", "bamboo",
    "banjo", "barrel", "basil", "beaver", "bellow", "bench", "berry", "bison", "blanket",
    "blossom", "bonnet", "border", "bottle", "boulder", "bracket", "breeze", "bridge",
    "bucket", "bugle", "bundle", "burrow", "butter", "cabin", "cactus", "camel", "candle",
    "carbon", "castle", "cedar", "cherry", "chimney", "cider", "circus", "citrus",
    "clover", "cobalt", "cocoa", "comet", "copper", "coral", "cotton", "cougar", "cradle",
    "cricket", "crystal", "curtain", "daisy", "dancer", "desert", "diamond", "dinner",
    "dipper", "dolphin", "domino", "donkey", "dragon", "eagle", "easel", "echo", "elbow",
    "emerald", "engine", "fabric", "falcon", "feather", "fennel", "fiddle", "finch",
    "flannel", "flute", "forest", "fossil", "frost", "fudge", "galaxy", "garden",
    "gazelle", "gecko", "ginger", "giraffe", "globe", "goblet", "golden", "gravel",
    "guitar", "gull", "hammer", "harbor", "hazel", "helmet", "hiker", "honey", "hornet",
    "hotel", "icicle", "igloo", "iguana", "indigo", "island", "ivory", "jacket", "jaguar",
    "jasmine", "jelly", "jester", "jigsaw", "jockey", "journal", "juniper", "kayak",
    "kernel", "kettle", "kindle", "kitten", "ladder", "lagoon", "lantern", "laptop",
    "lattice", "lemon", "lettuce", "lilac", "lizard", "lobster", "locket", "lumber",
    "magnet", "mango", "maple", "marble", "meadow", "melon", "mocha", "mosaic", "muffin",
    "museum", "napkin", "narwhal", "nectar", "needle", "nickel", "noodle", "nutmeg",
    "oasis", "ocean", "olive", "omelet", "onion", "opal", "orange", "orbit", "orchid",
    "otter", "oyster", "paddle", "palace", "panda", "paper", "parrot", "pasta", "peanut",
    "pebble", "pepper", "piano", "pickle", "pigeon", "pilot", "planet", "poppy", "potato",
    "prairie", "prism", "pumpkin", "puzzle", "pyramid", "quail", "rabbit", "radar",
    "rainbow", "raven", "ribbon", "rodeo", "rooster", "ruby", "rudder", "safari", "salmon",
    "sandal", "satin", "scarf", "shovel", "silver", "sleigh", "slipper", "spider",
    "sponge", "squash", "sugar", "sundial", "swan", "table", "tadpole", "teapot",
    "thistle", "thunder", "ticket", "tiger", "timber", "tomato", "topaz", "tractor",
    "trumpet", "tulip", "tundra", "turtle", "unicorn", "valley", "velvet", "violet",
    "viper", "visor", "voyage", "vulture", "waffle", "wagon", "walnut", "whale", "wheat",
    "willow", "window", "wombat", "yacht", "yarn", "yodel", "yogurt", "zebra", "zenith",
    "zephyr",
)

#: word -> its index (0..255)
WORD_INDEX: dict[str, int] = {word: i for i, word in enumerate(WORDS)}

assert len(WORDS) == 256 and len(WORD_INDEX) == 256
