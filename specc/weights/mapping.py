"""Pairing a weight file's tensors with a model's: by name, by rename rules, or by structure.

`strict`: every name must match. Rename rules (`{"transformer.h.*.ln_1.*": "h.*.attention.norm.*"}`
globs, or `"re:..."` regexes with `\\1` groups) rename the file's keys first, then names must match.
`auto`: names where they agree (after dropping or adding a common prefix such as `transformer.`),
then names that read the same word for word (`resnets_0.norm1` and `resnets.0.norm1`), then
structure (`specc.weights.pairing`: same tensors and shapes, decided by numbers, name words and
order of use, refused when nothing decides). Separate q/k/v projections are concatenated into a
fused one (`in_proj_weight`, `c_attn`) or a fused one is split, whatever their sizes (grouped-query
k/v smaller than q). A weight is transposed only when
its layer is known to store `[in, out]`: GPT-2's `Conv1D`, in any mode. Every pairing is in the
report with the reason it was made.
"""
from __future__ import annotations

import fnmatch
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from specc.lang.rename_rules import check_name_length, compile_rules
from specc.lang.errors import Problem, SpecError
from specc.weights.files import WeightFile
from specc.weights.pairing import Ambiguity, conv1d_layout, name_tokens, owners, pair_modules
from specc.weights.report import WeightsReport

MODES = ("auto", "strict")
_ROLE = re.compile(r"^(?:(?:to_|w_?)?(q|k|v)(?:_proj|_lin)?|(query|key|value))$")
_ROLE_ORDER = {"q": 0, "k": 1, "v": 2, "query": 0, "key": 1, "value": 2}
_SOURCE_RECOMPUTED = ("masked_bias", "inv_freq")


@dataclass
class Target:
    """A model tensor to fill: its key, shape, the class of the module owning it, parameter or buffer,
    and when the model uses it (the position of its layer in the forward; None when unknown)."""

    key: str
    shape: tuple
    layer: str
    floating: bool = True
    rank: int | None = None


@dataclass
class Assignment:
    """Where one model tensor's values come from: file keys and how to turn them into it."""

    target: str
    sources: list[str]
    how: str = "copy"          # copy | transpose | fuse (cat of q, k, v) | split (part `part` of 3) | stack (experts)
    part: int = 0
    sizes: list[int] | None = None   # split: the rows of q, k and v (grouped-query k/v are smaller)
    why: str = "name"          # what decided the pairing (the report shows it)


@dataclass
class Plan:
    """The assignments, the report, and the file's tensors under the names the assignments use."""

    assignments: list[Assignment]
    report: WeightsReport
    sources: dict[str, torch.Tensor]


def plan_load(targets: list[Target], weights: WeightFile, weights_map, allow_missing=()) -> Plan:
    """Pair `targets` (in the order the model uses them) with the file's tensors.

    Returns:
        The assignments and the report; unmatched tensors are in the report, not raised here.

    Raises:
        SpecError: TYPE_ERROR for an unknown mode or a malformed rename rule.
    """
    mode = weights_map if isinstance(weights_map, str) else "rules"
    if isinstance(weights_map, str) and weights_map not in MODES:
        raise SpecError(Problem(f"weights_map must be 'auto', 'strict' or a mapping of rename rules, "
                                f"got {weights_map!r}", None, "TYPE_ERROR"))
    sources = dict(weights.tensors)
    original_names = list(sources)
    if mode == "rules":
        sources = _rename(sources, weights_map)
    elif mode == "auto":
        sources = _align_prefix(sources, {target.key for target in targets})
    stored_in_out = conv1d_layout(dict(zip(original_names, weights.tensors.values())))
    original_names = dict(zip(sources, original_names))   # renaming keeps the order
    conv1d = {key for key, original in original_names.items() if original in stored_in_out}
    sources = dict(sorted(sources.items(), key=lambda item: _natural(item[0])))
    state = _State(targets, sources, WeightsReport(weights.origin, mode), conv1d)
    state.match_names()
    if mode == "auto":
        state.match_name_words()
        state.match_fused()
        state.match_experts()
        state.match_structure()
    state.finish(allow_missing, original_names)
    return Plan(state.assignments, state.report, sources)


class _State:
    def __init__(self, targets: list[Target], sources: dict[str, torch.Tensor], report: WeightsReport,
                 conv1d: set[str]):
        self.targets = {target.key: target for target in targets}
        self.sources = sources
        self.report = report
        self.conv1d = conv1d            # file keys stored [in, out] (GPT-2 Conv1D)
        self.assignments: list[Assignment] = []
        self.free_targets = dict.fromkeys(self.targets)   # ordered sets: taking one is O(1)
        self.free_sources = dict.fromkeys(sources)
        self.ambiguities: list[Ambiguity] = []

    def take(self, assignment: Assignment, by: str) -> None:
        self.assignments.append(assignment)
        del self.free_targets[assignment.target]
        for source in assignment.sources:
            self.free_sources.pop(source, None)
        pairs = self.report.by_name if by == "name" else self.report.by_structure
        pairs.append((assignment.target, ", ".join(assignment.sources)))
        self.report.reasons[assignment.target] = assignment.why
        if assignment.how == "transpose":
            self.report.transposed.append(assignment.target)
        elif assignment.how in ("fuse", "split"):
            self.report.fused.append(assignment.target)

    def source_shape(self, key: str) -> tuple:
        """The file tensor's shape in the model's layout: a Conv1D weight's transposed."""
        shape = tuple(self.sources[key].shape)
        return shape[::-1] if key in self.conv1d else shape

    def how(self, target: str, source: str) -> str:
        return "transpose" if source in self.conv1d and self.targets[target].layer != "Conv1D" else "copy"

    # ----- by name -------------------------------------------------------------------------------
    def match_names(self) -> None:
        for key in list(self.free_targets):
            if key not in self.sources:
                continue
            want, have = self.targets[key].shape, self.source_shape(key)
            if have == want:
                self.take(Assignment(key, [key], self.how(key, key), why="name"), "name")
            else:
                self.report.notes[key] = f"model {list(want)}, file {list(self.sources[key].shape)}"

    def match_name_words(self) -> None:
        """Names that read the same word for word and number for number (`resnets_0` = `resnets.0`)."""
        target_tokens = _unique_by(self.free_targets, name_tokens)
        source_tokens = _unique_by(self.free_sources, name_tokens)
        for tokens, target in target_tokens.items():
            source = source_tokens.get(tokens)
            if source is not None and self.source_shape(source) == self.targets[target].shape:
                self.take(Assignment(target, [source], self.how(target, source), why="name words"), "structure")

    # ----- fused q/k/v ---------------------------------------------------------------------------
    def match_fused(self) -> None:
        """Separate q, k, v in the file -> one fused model tensor, and the other way round."""
        source_triples = _triples(self.free_sources, {k: tuple(v.shape) for k, v in self.sources.items()})
        singles = [key for key in self.free_targets if not _role_stem(key)]
        self._pair_fused(source_triples, singles, {k: self.targets[k].shape for k in singles}, fuse=True)
        target_triples = _triples(self.free_targets, {k: t.shape for k, t in self.targets.items()})
        fused_sources = [key for key in self.free_sources if not _role_stem(key)]
        self._pair_fused(target_triples, fused_sources, {k: tuple(self.sources[k].shape) for k in fused_sources},
                         fuse=False)

    def _pair_fused(self, triples: list[list[str]], singles: list[str], single_shapes: dict, fuse: bool) -> None:
        """q, k, v of any sizes (grouped-query k/v are smaller than q) against a tensor of their summed rows."""
        shape_of = (lambda key: tuple(self.sources[key].shape)) if fuse else (lambda key: tuple(self.targets[key].shape))
        by_shape: dict[tuple, list] = defaultdict(list)
        for triple in triples:
            shapes = [shape_of(key) for key in triple]
            by_shape[(_leaf_kind(triple[0]), (sum(shape[0] for shape in shapes), *shapes[0][1:]))].append(triple)
        for (leaf, shape), group in by_shape.items():
            candidates = [key for key in singles if single_shapes[key] == shape and _leaf_kind(key) == leaf]
            if len(candidates) != len(group):
                continue
            for single, triple in zip(candidates, group):
                if fuse:
                    self.take(Assignment(single, triple, "fuse", why="fused q/k/v"), "structure")
                else:
                    sizes = [shape_of(target)[0] for target in triple]
                    for part, target in enumerate(triple):
                        self.take(Assignment(target, [single], "split", part, sizes, why="split q/k/v"), "structure")

    # ----- mixture-of-experts layouts -------------------------------------------------------------
    def match_experts(self) -> None:
        """Mixtral's per-expert files (`experts.{e}.w1/w3/w2`) -> stacked experts (`experts.gate_up_proj`
        [E, 2F, D] = per expert cat(w1, w3); `experts.down_proj` [E, D, F] = w2), layer by layer in order."""
        stacked = sorted((key for key in self.free_targets if key.endswith("experts.gate_up_proj")), key=_natural)
        groups = _expert_groups(self.free_sources)
        if not stacked or len(stacked) != len(groups):
            return
        for gate_up, experts in zip(stacked, groups):
            down = gate_up.removesuffix("gate_up_proj") + "down_proj"
            shape = self.targets[gate_up].shape
            first, down_first = self.sources[experts[0]["w1"]].shape, self.sources[experts[0]["w2"]].shape
            if (down not in self.free_targets or shape != (len(experts), 2 * first[0], first[1])
                    or self.targets[down].shape != (len(experts), *down_first)):
                continue
            pairs = [key for expert in experts for key in (expert["w1"], expert["w3"])]
            self.take(Assignment(gate_up, pairs, "stack", why="stacked experts (w1, w3)"), "structure")
            self.take(Assignment(down, [expert["w2"] for expert in experts], "stack", why="stacked experts (w2)"),
                      "structure")

    # ----- by structure --------------------------------------------------------------------------
    def match_structure(self) -> None:
        """Same-signature modules paired where evidence decides (`pairing.pair_modules`), refused otherwise."""
        floating = [key for key in self.free_targets if self.targets[key].floating]
        target_groups = owners(floating, lambda key: self.targets[key].shape)
        source_groups = owners([key for key in self.free_sources if self.sources[key].is_floating_point()],
                               self.source_shape)
        use_rank = {key.rpartition(".")[0]: self.targets[key].rank for key in floating}
        layers = {key.rpartition(".")[0]: self.targets[key].layer for key in floating}
        for signature, target_modules in target_groups.items():
            source_modules = source_groups.get(signature, [])
            if len(source_modules) != len(target_modules):
                continue   # a different number of such modules: no pairing can be trusted
            keys_of = dict(target_modules + source_modules)
            pairs, undecided = pair_modules([owner for owner, _ in target_modules],
                                            [owner for owner, _ in source_modules], use_rank, layers)
            for target_owner, source_owner, why in pairs:
                for target, source in zip(keys_of[target_owner], keys_of[source_owner]):
                    self.take(Assignment(target, [source], self.how(target, source), why=why), "structure")
            self.ambiguities += [Ambiguity(targets, sources, signature) for targets, sources in undecided]

    # ----- what is left ----------------------------------------------------------------------------
    def finish(self, allow_missing, original_names: dict[str, str]) -> None:
        used = [self.sources[key] for assignment in self.assignments for key in assignment.sources]
        for key in list(self.free_targets):
            if not self.targets[key].floating:
                del self.free_targets[key]
                self.report.recomputed.append(key)
        for key in list(self.free_sources):
            tensor = self.sources[key]
            if _recomputable_source(key, tensor):
                self.report.recomputed.append(key)
            elif any(other.shape == tensor.shape and torch.equal(other, tensor) for other in used):
                self.report.tied.append(key)
            else:
                continue
            del self.free_sources[key]
        patterns = list(allow_missing or ())
        self.report.ambiguous = [ambiguity.message() for ambiguity in self.ambiguities]
        for free, unmatched in ((self.free_targets, self.report.unmatched_model),
                                (self.free_sources, self.report.unmatched_file)):
            for key in free:
                names = {key, original_names.get(key, key)}
                allowed = any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)
                (self.report.allowed if allowed else unmatched).append(key)


def _unique_by(keys: list[str], key_of) -> dict:
    """{key_of(key): key} for the values only one key has."""
    counts = Counter(map(key_of, keys))
    return {key_of(key): key for key in keys if counts[key_of(key)] == 1}


def _leaf_kind(key: str) -> str:
    """`in_proj_weight` (nn.MultiheadAttention's fused q/k/v) is a `weight`."""
    return key.rpartition(".")[2].removeprefix("in_proj_")


def _role_stem(key: str) -> tuple[str, int] | None:
    """`attn.q_proj.weight` -> ("attn.{}.weight", 0): the key with its q/k/v part marked."""
    parts = key.split(".")
    for index, part in enumerate(parts):
        match = _ROLE.match(part)
        if match:
            role = match.group(1) or match.group(2)
            return ".".join(parts[:index] + ["{" + part.replace(role, "", 1) + "}"] + parts[index + 1:]), _ROLE_ORDER[role]
    return None


def _triples(keys: list[str], shapes: dict[str, tuple]) -> list[list[str]]:
    """Keys that are the q, k and v of the same projection, each triple in q, k, v order."""
    stems: dict[str, dict[int, str]] = defaultdict(dict)
    for key in keys:
        found = _role_stem(key)
        if found:
            stems[found[0]][found[1]] = key
    triples = []
    for roles in stems.values():
        if set(roles) == {0, 1, 2} and len({tuple(shapes[key])[1:] for key in roles.values()}) == 1:
            triples.append([roles[0], roles[1], roles[2]])
    return triples


def _expert_groups(keys: list[str]) -> list[list[dict[str, str]]]:
    """Per layer, in order: each expert's `{w1, w2, w3}` file keys (`...experts.{e}.w1.weight`), complete ones only."""
    layers: dict[str, dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for key in keys:
        match = re.fullmatch(r"(.*experts)\.(\d+)\.(w[123])\.weight", key)
        if match:
            layers[match.group(1)][int(match.group(2))][match.group(3)] = key
    groups = []
    for prefix in sorted(layers, key=_natural):
        experts = layers[prefix]
        if sorted(experts) == list(range(len(experts))) and all(len(parts) == 3 for parts in experts.values()):
            groups.append([experts[index] for index in range(len(experts))])
    return groups


def _recomputable_source(key: str, tensor: torch.Tensor) -> bool:
    """Buffers a model recomputes: integer tables and counters, rotary frequencies, GPT-2's causal
    mask (`attn.bias`, [1, 1, T, T])."""
    leaf = key.rpartition(".")[2]
    causal_mask = leaf == "bias" and tensor.dim() == 4 and tensor.shape[:2] == (1, 1)
    return not tensor.is_floating_point() or leaf in _SOURCE_RECOMPUTED or causal_mask


def _align_prefix(sources: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop (or add) the prefix that makes most file keys equal model keys: `transformer.`, `module.`.

    Counted in one pass over each side (a file of a million keys costs a million steps, not a
    million squared); ties keep the names as they are, then the first prefix in sorted order.
    """
    unchanged = sum(key in target_keys for key in sources)
    dropped: Counter = Counter()   # prefix -> matches gained by dropping it (less those lost)
    for key in sources:
        parts = key.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                prefix = ".".join(parts[:depth]) + "."
                dropped[prefix] += (key[len(prefix):] in target_keys) - (key in target_keys)
    added: Counter = Counter()     # prefix -> file keys that match once it is put in front
    for target in target_keys:
        head, dot, rest = target.partition(".")
        if dot and rest in sources:
            added[head + "."] += 1
    best, best_count = (lambda key: key), unchanged
    for prefix in sorted(dropped):
        if unchanged + dropped[prefix] > best_count:
            best_count = unchanged + dropped[prefix]
            best = lambda key, prefix=prefix: key[len(prefix):] if key.startswith(prefix) else key  # noqa: E731
    for prefix in sorted(added):
        if added[prefix] > best_count:
            best, best_count = (lambda key, prefix=prefix: prefix + key), added[prefix]
    renamed = {best(key): value for key, value in sources.items()}
    return renamed if len(renamed) == len(sources) else sources


def _rename(sources: dict[str, torch.Tensor], rules) -> dict[str, torch.Tensor]:
    """The file's keys renamed by the first rule matching each (see rename_rules.py for the bounds)."""
    compiled = compile_rules(rules)
    renamed = {}
    for key, value in sources.items():
        check_name_length(key)
        new = next((name for name in (rule.rename(key) for rule in compiled) if name is not None), key)
        renamed[new] = value
    return renamed


def _natural(key: str) -> tuple:
    """Sort key: numbers as numbers (`h.2` before `h.10`)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("."))
