"""Racing a sweep's configs on seeds (`replicates=auto`): which configs get more seeds, round by round.

Every config starts on `min_seeds` seeds. After each round, among the configs still in the race, the
leader is the one with the highest mean objective, and each rival is compared with it by the
verdict's own test (seed_noise.compare: a paired t-test, since the configs still in the race ran on
the same seeds). A rival whose 95% interval of the leader's lead lies wholly above zero, and has a
width, is decided *behind* and leaves the race; an undecided rival that has reached `max_seeds` is *undecided at the
max*; every other undecided rival, and the leader with them, get `seeds_per_round` more seeds. When
no rival is left to settle, the leader is decided too. A config that left the race stays out, even
if the leader's mean later falls (as in the races below).

A config whose run failed, or was pruned, on a seed leaves the race (*dropped*, with why): its seeds
would no longer pair with the others', and a config that fails is no candidate to settle.

Successive elimination in the spirit of Maron & Moore's Hoeffding races (1994) and Birattari et
al.'s F-race (2002), with a t-test as the bound; docs/comparing.md says what it does not control.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fmnist_exp.analysis import seed_noise

RACE_FILE = "race.json"  # in the sweep folder's summary/: the race as it stands after each round

RACING, LEADER, AT_MAX, BEHIND, DROPPED = "racing", "leader", "undecided at the max", "behind", "dropped"
ORDER = (LEADER, RACING, AT_MAX, BEHIND, DROPPED)  # how the note lists them


def round_indices(seed_offset: int, min_seeds: int, seeds_per_round: int, max_seeds: int) -> range:
    """The replicates one job of a race trains (replicate i has the seed seed+i): min_seeds from 0 in
    the first round; from `seed_offset` (set on a later round's jobs) the next seeds_per_round; never
    past max_seeds."""
    count = seeds_per_round if seed_offset else min_seeds
    return range(seed_offset, min(seed_offset + count, max_seeds))


@dataclass
class Entrant:
    """One config of the race: its seeds' objectives and how it left the race."""

    label: str  # its swept values, as its runs are named
    overrides: list[str]  # its first job's overrides, which a later round's job extends
    scores: dict[str, float] = field(default_factory=dict)  # the objective by seed
    state: str = RACING
    reason: str = ""  # how it was decided, in words

    @property
    def seeds(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.scores.values()) if self.scores else math.nan

    def stats(self) -> seed_noise.ConfigStats:
        return seed_noise.ConfigStats(
            self.label, self.label, objectives=list(self.scores.values()), seeds=list(self.scores)
        )


def decide(racing: list[Entrant], max_seeds: int) -> list[Entrant]:
    """Decide the configs still racing (each on two or more seeds); returns those that get more seeds,
    the leader first, or none when the race is over. Sets the state and reason of those decided."""
    if not racing:
        return []
    leader = max(racing, key=lambda entrant: entrant.mean)  # the first of equals
    undecided = []
    for rival in racing:
        if rival is leader:
            continue
        verdict = seed_noise.compare(leader.stats(), rival.stats())
        lead = f"{leader.label} leads by {verdict.text}"
        # Behind: the lead's interval wholly above zero. NaN (no test possible) is not above zero, and a
        # zero-width interval (the same difference on every seed so far, which the 1/6,000 steps of
        # a validation accuracy make likely on two seeds) decides nothing: the spread is unknown.
        if verdict.interval[0] > 0 and verdict.interval[1] > verdict.interval[0]:
            rival.state, rival.reason = BEHIND, f"behind after {rival.seeds} seeds: {lead}"
        elif rival.seeds >= max_seeds:
            rival.state, rival.reason = AT_MAX, f"undecided at the max of {max_seeds} seeds: {lead}"
        else:
            undecided.append(rival)
    more = [entrant for entrant in (leader, *undecided) if entrant.seeds < max_seeds]
    if not undecided or not more:
        tied = sum(1 for rival in racing if rival.state == AT_MAX)
        leader.state = LEADER
        leader.reason = f"the leader after {leader.seeds} seeds" + (
            f"; {tied} rival{'s' if tied != 1 else ''} undecided at the max" if tied else ""
        )
        return []
    return more


@dataclass
class Race:
    """A race's bounds and entrants, the runs it trained and the rounds it launched."""

    min_seeds: int
    max_seeds: int
    seeds_per_round: int = 1
    entrants: list[Entrant] = field(default_factory=list)
    runs: int = 0  # runs the race trained (or reused from an earlier sweep), failed ones included
    rounds: int = 1  # rounds launched: the first gives every config min_seeds seeds

    def record(
        self, label: str, overrides: list[str], seeds: list[int], objectives: list[float], pruned: bool, failure: str
    ) -> None:
        """One job's result: the seeds it trained and their objectives (NaN where a run failed)."""
        entrant = next((entrant for entrant in self.entrants if entrant.label == label), None)
        if entrant is None:
            entrant = Entrant(label, list(overrides))
            self.entrants.append(entrant)
        self.runs += len(seeds)
        for seed, objective in zip(seeds, objectives, strict=True):
            if math.isfinite(objective):
                entrant.scores[str(seed)] = objective
        failed = [seed for seed, objective in zip(seeds, objectives, strict=True) if not math.isfinite(objective)]
        why = f" ({failure})" if failure else ""
        if pruned:
            trained = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
            entrant.state, entrant.reason = DROPPED, f"dropped after {trained}: a run was pruned{why}"
        elif failed:
            entrant.state, entrant.reason = DROPPED, f"dropped: its run on seed {failed[0]} failed{why}"
        elif not seeds:
            entrant.state, entrant.reason = DROPPED, f"dropped: its job trained nothing{why}"

    def next_round(self) -> list[Entrant]:
        """Decide after a round: the configs that get more seeds in the next one (none: it is over)."""
        more = decide([entrant for entrant in self.entrants if entrant.state == RACING], self.max_seeds)
        self.rounds += 1 if more else 0
        return more

    @property
    def saved(self) -> int:
        """Runs saved against training every config on max_seeds seeds."""
        return len(self.entrants) * self.max_seeds - self.runs

    def lines(self) -> list[str]:
        """The race in words: its rules, the runs it saved, and how each config was decided."""
        head = (
            f"Race (replicates=auto): {self.min_seeds} to {self.max_seeds} seeds per config, "
            f"{self.seeds_per_round} more a round; {self.rounds} round{'s' if self.rounds != 1 else ''}, "
            f"{self.runs} runs instead of {len(self.entrants) * self.max_seeds} with every config on "
            f"{self.max_seeds} seeds ({self.saved} saved)."
        )
        ordered = sorted(
            self.entrants,
            key=lambda entrant: (ORDER.index(entrant.state), -entrant.mean if entrant.scores else math.inf),
        )
        return [
            head,
            *(f"- {entrant.label}: {entrant.reason or 'still racing when the sweep stopped'}" for entrant in ordered),
        ]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")


def load(path: Path) -> Race | None:
    """The race a sweep's folder holds, or None (no race: replicates was a number)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["entrants"] = [Entrant(**entrant) for entrant in data["entrants"]]
    return Race(**data)
