"""What a weight load did, tensor by tensor: the report every `weights=` load returns and prints."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from specc.lang.errors import Problem, SpecError

_SHOWN = 8   # unmatched names listed in an error before "... and N more"


@dataclass
class WeightsReport:
    """Every model tensor and every file tensor, and how (or whether) they were paired.

    `by_name` / `by_structure` are (model key, file key) pairs; `transposed` and `fused` name the
    model keys whose tensor was transposed (Hugging Face `Conv1D`) or concatenated from / split
    into q, k, v; `recomputed` the integer buffers (step counters, index tables) kept because a
    model recomputes them, and the file's buffers skipped for the same reason; `tied` the file's
    copies of a tied weight; `allowed` what `allow_missing` let through. `reasons` says for each
    paired model key why it was paired ("name", "name words", "numbers", "order of use", "the only
    one of its kind", ...); `ambiguous` the groups `auto` refused to pair, each with a rename rule.
    """

    origin: str
    mode: str
    by_name: list[tuple[str, str]] = field(default_factory=list)
    by_structure: list[tuple[str, str]] = field(default_factory=list)
    transposed: list[str] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)
    recomputed: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    unmatched_model: list[str] = field(default_factory=list)
    unmatched_file: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)   # key -> why it did not match (shapes)
    reasons: dict[str, str] = field(default_factory=dict)  # model key -> why it was paired
    ambiguous: list[str] = field(default_factory=list)     # groups nothing told apart, with a rule

    @property
    def ok(self) -> bool:
        return not self.unmatched_model and not self.unmatched_file

    def summary(self) -> str:
        """The report as a few lines (what `specc port` prints)."""
        lines = [f"weights {self.origin} ({self.mode}): {len(self.by_name)} matched by name, "
                 f"{len(self.by_structure)} by structure"]
        if self.by_structure:
            counts = Counter(self.reasons[target] for target, _ in self.by_structure)
            lines.append("  why: " + ", ".join(f"{why} {count}" for why, count in counts.most_common()))
            lines.append(f"  paired by structure ({len(self.by_structure)}):")
            lines += [f"    {target} <- {source} ({self.reasons[target]})" for target, source in self.by_structure[:_SHOWN]]
            if len(self.by_structure) > _SHOWN:
                lines.append(f"    ... and {len(self.by_structure) - _SHOWN} more (weights_report.reasons has every one)")
        for label, keys in (("transposed", self.transposed), ("fused/split q,k,v", self.fused),
                            ("recomputed buffers", self.recomputed), ("tied copies skipped", self.tied),
                            ("allowed missing", self.allowed), ("unmatched in the model", self.unmatched_model),
                            ("unmatched in the file", self.unmatched_file)):
            if keys:
                lines.append(f"  {label} ({len(keys)}): {_listing(keys, self.notes)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def raise_if_unmatched(self) -> None:
        """Raises:
            SpecError: CHECKPOINT_ERROR naming the tensors left unmatched on either side.
        """
        if self.ok:
            return
        parts = [f"auto will not guess: {message}" for message in self.ambiguous[:3]]
        if self.unmatched_model:
            parts.append(f"{len(self.unmatched_model)} model tensors got no weights: "
                         f"{_listing(self.unmatched_model, self.notes)}")
        if self.unmatched_file:
            parts.append(f"{len(self.unmatched_file)} file tensors were not used: "
                         f"{_listing(self.unmatched_file, self.notes)}")
        hint = ("; list them in allow_missing, or map names with rename rules" if self.mode != "auto"
                else "; map them with rename rules, or list them in allow_missing")
        raise SpecError(Problem(f"{self.origin}: the weights do not fit this model ({self.mode}): "
                                + "; ".join(parts) + hint, None, "CHECKPOINT_ERROR"))


def _listing(keys: list[str], notes: dict[str, str]) -> str:
    shown = [f"{key} ({notes[key]})" if key in notes else key for key in keys[:_SHOWN]]
    more = f" ... and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(shown) + more
