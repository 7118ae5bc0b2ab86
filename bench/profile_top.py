"""Top hotspots of a py-spy ``--format raw`` profile (collapsed stacks: ``frame;frame;... count`` per line).

    py-spy record --pid PID --duration 20 --function --format raw -o /tmp/profile.txt
    PYTHONPATH=src:. python3.11 -m bench.profile_top /tmp/profile.txt --top 15

``self`` is the share of samples in which the function was the innermost frame (where the time is spent);
``total`` the share in which it was anywhere on the stack (time spent in it and in what it calls).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Hotspot:
    frame: str
    self_percent: float
    total_percent: float


def parse_collapsed(text: str) -> tuple[Counter[str], Counter[str], int]:
    """(self samples per frame, total samples per frame, number of samples) of collapsed-stack text."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            total_counts[frame] += count
    return self_counts, total_counts, samples


def top_hotspots(text: str, n: int = 15, by: str = "self") -> list[Hotspot]:
    self_counts, total_counts, samples = parse_collapsed(text)
    if samples == 0:
        return []
    ranking = self_counts if by == "self" else total_counts
    return [
        Hotspot(frame, 100 * self_counts[frame] / samples, 100 * total_counts[frame] / samples)
        for frame, _ in ranking.most_common(n)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by", choices=("self", "total"), default="self")
    args = parser.parse_args(argv)
    text = args.profile.read_text(errors="replace")
    _, _, samples = parse_collapsed(text)
    print(f"{samples} samples; ranked by {args.by}")
    print("| # | self % | total % | function (file:line) |")
    print("|---|---|---|---|")
    for i, h in enumerate(top_hotspots(text, args.top, args.by), 1):
        print(f"| {i} | {h.self_percent:.1f} | {h.total_percent:.1f} | `{h.frame}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
