"""Pairing by structure: which file module fills which model module when their names differ.

Modules (the owners of tensors) are grouped by their signature: the leaf names and shapes of the
tensors they hold. Within a group of same-signature modules, a pairing is accepted only when
evidence decides it, in this order:

1. the only one: one model module and one file module of that signature;
1b. kind: an embedding table and a bias-free Linear can hold the same `[V, D]` weight; the model
   knows which of its modules is an `Embedding`, and a file's name says so (`embed`, `wte`, ...);
2. numbers: the numbers in their paths (`layers.3`, `resnets_1`) agree as a whole, so the group
   splits into smaller groups of equal numbers (`layers.0.*` with `model.layers.0.*`);
3. name words: the words that set a module apart from the rest of its group (after splitting
   names at `.`, `_` and digits) meet in exactly one module on the other side, both ways;
4. order of use: the file's modules are named alike but for their numbers (`ln_1`, `ln_2`) and
   the model uses its modules one after another, so the k-th used takes the k-th numbered.

Whatever evidence leaves undecided is refused, never guessed: the `Ambiguity` names both sides
and a rename rule that would settle it.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

_WORD = re.compile(r"[a-z]+|[A-Z][a-z]*|\d+")
_WORDS_LIMIT = 1024   # modules in one undecided group whose name words are compared pairwise (a bound)
_EMBEDDING_WORDS = {"embed", "embedding", "emb", "wte", "wpe", "tok", "token", "shared"}   # name words of tables
CONV1D_MODULES = ("c_attn", "c_proj", "c_fc", "q_attn")   # GPT-2's `Conv1D` layers, stored [in, out]


@dataclass
class Ambiguity:
    """Same-signature modules on both sides that nothing tells apart."""

    targets: list[str]
    sources: list[str]
    signature: tuple

    def message(self) -> str:
        shapes = ", ".join(f"{leaf} {list(shape)}" for leaf, shape in self.signature)
        rule = rename_rule(self.sources[0], self.targets[0])
        return (f"model {_some(self.targets)} and file {_some(self.sources)} hold the same tensors "
                f"({shapes}) and nothing in their numbers, name words or order of use tells them apart; "
                f"a rename rule settles it, e.g. {rule} (if that is the pairing)")


def _some(paths: list[str], shown: int = 4) -> str:
    more = f" ... and {len(paths) - shown} more" if len(paths) > shown else ""
    return " / ".join(paths[:shown]) + more


def conv1d_layout(sources: dict) -> set[str]:
    """File keys stored `[in, out]` by Hugging Face's `Conv1D` (GPT-2): the weights of its `c_attn`,
    `c_proj`, `c_fc`, `q_attn` modules, when the file's `c_attn` weights show that layout
    (`[dim, 3·dim]`; an `nn.Linear` c_attn, as specc itself writes it, is `[3·dim, dim]`)."""
    def module_is(key: str, names: tuple[str, ...]) -> bool:   # `h.0.attn.c_attn.weight`, `h_0_attn_c_attn.weight`
        owner, _, leaf = key.rpartition(".")
        return leaf == "weight" and any(re.search(rf"(^|[._]){name}$", owner) for name in names)

    attention = [tensor.shape for key, tensor in sources.items() if module_is(key, ("c_attn",)) and tensor.dim() == 2]
    if not attention or not all(shape[1] == 3 * shape[0] for shape in attention):
        return set()
    return {key for key, tensor in sources.items() if module_is(key, CONV1D_MODULES) and tensor.dim() == 2}


def owners(keys: list[str], shape_of) -> dict[tuple, list[tuple[str, list[str]]]]:
    """Tensors grouped by owning module, then modules grouped by their signature, keys in order."""
    members: dict[str, list[str]] = {}
    for key in keys:
        members.setdefault(key.rpartition(".")[0], []).append(key)
    groups: dict[tuple, list] = defaultdict(list)
    for owner, owned in members.items():
        owned = sorted(owned, key=lambda key: key.rpartition(".")[2])
        signature = tuple((key.rpartition(".")[2], tuple(shape_of(key))) for key in owned)
        groups[signature].append((owner, owned))
    return groups


def pair_modules(targets: list[str], sources: list[str], use_rank: dict[str, int], layers: dict[str, str]
                 ) -> tuple[list[tuple[str, str, str]], list[tuple[list[str], list[str]]]]:
    """Pair same-signature model modules (`targets`, in order of use) with file modules.

    Args:
        layers: each target module's layer class (`Embedding`, `Linear`, ...).

    Returns:
        `(pairs, undecided)`: (target, source, why) triples, and the groups evidence left open.
    """
    if len(targets) == 1:
        return [(targets[0], sources[0], "the only one of its kind")], []
    kinds = {**{t: layers.get(t) == "Embedding" for t in targets},
             **{s: bool(_EMBEDDING_WORDS & set(name_words(s.rpartition(".")[2]))) for s in sources}}
    for key, reason in ((kinds.get, "kind"), (_index_numbers, "numbers"), (_all_numbers, "numbers")):
        split = _split_by(targets, sources, key)
        if split:
            return _pair_groups(split, reason, use_rank, layers)
    pairs = _by_words(targets, sources) if len(targets) <= _WORDS_LIMIT else []
    targets = [t for t in targets if t not in {p[0] for p in pairs}]
    sources = [s for s in sources if s not in {p[1] for p in pairs}]
    if len(targets) == 1:
        return pairs + [(targets[0], sources[0], "the only one left")], []
    if targets and _ordered(targets, sources, use_rank):
        ranked = sorted(targets, key=lambda t: use_rank.get(t, -1))
        numbered = sorted(sources, key=_all_numbers)
        return pairs + [(t, s, "order of use") for t, s in zip(ranked, numbered)], []
    return pairs, [(targets, sources)] if targets else []


def _pair_groups(split: list[tuple[list[str], list[str]]], reason: str, use_rank: dict[str, int],
                 layers: dict[str, str]) -> tuple[list[tuple[str, str, str]], list[tuple[list[str], list[str]]]]:
    """`pair_modules` within each group of a split; a group's lone member is paired for `reason`
    (what split the modules), the rest for their own evidence."""
    pairs, undecided = [], []
    for group_targets, group_sources in split:
        found, left = pair_modules(group_targets, group_sources, use_rank, layers)
        pairs += [(t, s, why if why != "the only one of its kind" else reason) for t, s, why in found]
        undecided += left
    return pairs, undecided


def _split_by(targets: list[str], sources: list[str], key) -> list[tuple[list[str], list[str]]]:
    """Groups of equal `key` on both sides, when the keys agree as a whole and split something."""
    target_groups: dict = defaultdict(list)
    source_groups: dict = defaultdict(list)
    for target in targets:
        target_groups[key(target)].append(target)
    for source in sources:
        source_groups[key(source)].append(source)
    if len(target_groups) < 2 or {value: len(group) for value, group in target_groups.items()} != \
            {value: len(group) for value, group in source_groups.items()}:
        return []
    return [(group, source_groups[value]) for value, group in target_groups.items()]


def _by_words(targets: list[str], sources: list[str]) -> list[tuple[str, str, str]]:
    """Pairs whose distinguishing words meet in exactly one module on the other side, both ways."""
    target_words, source_words = _distinct_words(targets), _distinct_words(sources)
    pairs = []
    for target, words in target_words.items():
        matches = [source for source, other in source_words.items() if words & other]
        if len(matches) != 1:
            continue
        back = [t for t, other in target_words.items() if other & source_words[matches[0]]]
        if back == [target]:
            pairs.append((target, matches[0], "name words"))
    return pairs


def _distinct_words(paths: list[str]) -> dict[str, set[str]]:
    words = {path: set(name_words(path)) for path in paths}
    common = set.intersection(*words.values()) if words else set()
    return {path: found - common for path, found in words.items()}


def _ordered(targets: list[str], sources: list[str], use_rank: dict[str, int]) -> bool:
    """The file's modules differ only in their numbers, and the model's are used one after another."""
    skeletons = {re.sub(r"\d+", "#", source) for source in sources}
    ranks = [use_rank.get(target) for target in targets]
    return (len(skeletons) == 1 and len(set(map(_all_numbers, sources))) == len(sources)
            and None not in ranks and len(set(ranks)) == len(ranks))


def name_words(path: str) -> list[str]:
    """`mid_block.resnets_0.norm1` -> ['mid', 'block', 'resnet', 'norm']: lowercase words, no numbers,
    a plural's `s` dropped (`resnets` and `resnet` are one word)."""
    words = [word.lower() for word in _WORD.findall(path) if not word.isdigit()]
    return [word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
            for word in words]


def name_tokens(path: str) -> tuple[str, ...]:
    """Words and numbers in order: `resnets_0.norm1` and `resnets.0.norm1` read the same."""
    return tuple(word.lower() for word in _WORD.findall(path))


def _index_numbers(path: str) -> tuple[int, ...]:
    """Numbers that are whole path parts (`layers.3`): positions in a list of modules."""
    return tuple(int(part) for part in path.split(".") if part.isdigit())


def _all_numbers(path: str) -> tuple[int, ...]:
    return tuple(int(number) for number in re.findall(r"\d+", path))


def rename_rule(source: str, target: str) -> str:
    """A glob rule renaming the file module `source` (and its tensors) to the model's `target`;
    list positions they share become `*`."""
    source_parts, target_parts = source.split("."), target.split(".")
    shared = _index_numbers(source) == _index_numbers(target)
    star = (lambda parts: ["*" if part.isdigit() else part for part in parts]) if shared else (lambda parts: parts)
    return "{" + f"'{'.'.join(star(source_parts))}.*': '{'.'.join(star(target_parts))}.*'" + "}"
