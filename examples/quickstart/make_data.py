#!/usr/bin/env python3
"""Writes the quickstart dataset (train.jsonl) deterministically: short sentences with a clear,
learnable structure (arithmetic, facts about a small made-up world, and counting), so that a
tiny model's loss falls visibly within a couple of minutes of CPU training."""
import json
import random
import sys

rng = random.Random(1234)
colors = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
animals = ["cat", "dog", "fox", "owl", "bear", "frog", "wolf", "hare", "deer", "crow"]
places = ["the river", "the hill", "the forest", "the lake", "the village", "the meadow"]
numbers = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
favourite = {a: colors[i % len(colors)] for i, a in enumerate(animals)}
home = {a: places[(3 * i) % len(places)] for i, a in enumerate(animals)}

rows = []
for _ in range(600):
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    rows.append(f"Question: what is {a} plus {b}? Answer: {a} plus {b} is {a + b}.")
for _ in range(600):
    a = rng.choice(animals)
    rows.append(f"The {a} lives near {home[a]} and its favourite colour is {favourite[a]}.")
for _ in range(400):
    start = rng.randint(0, 6)
    rows.append("Counting: " + ", ".join(numbers[start:start + 5]) + ".")
for _ in range(400):
    a = rng.choice(animals)
    n = rng.randint(2, 9)
    rows.append(f"There were {numbers[n]} {a}s at {home[a]}; one left, so {numbers[n - 1]} {a}s stayed.")
rng.shuffle(rows)
out = sys.argv[1] if len(sys.argv) > 1 else "train.jsonl"
with open(out, "w") as f:
    for r in rows:
        f.write(json.dumps({"text": r}) + "\n")
