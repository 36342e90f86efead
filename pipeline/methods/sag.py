"""Structured attention graphs (Shitole et al., NeurIPS 2021): every small way the model can reach
its decision, not one heat map.

The model input is cut into a ``grid`` × ``grid`` lattice of patches. A patch set is *sufficient*
when the image that keeps those patches and blurs the rest holds the target's probability at
``threshold`` × its clean probability or more. Kept and blurred cells meet in ``feather``-wide
Gaussian ramps, as the published code's bilinear upsampling of its 7 × 7 mask: hard seams are
an edge pattern of their own that drags a CNN's probability down (Lite0 photos lost every root
to it). Steps, each one batched classifier pass over the candidates of every image of the batch,
and no set classified twice:

1. ranking: every patch alone kept (insertion) and every patch alone blurred (occlusion); a
   patch's score is p(keep only it) + p(clean) − p(blur only it). This is the method's own cheap
   perturbation map (it does not read another method's map, so a run's methods stay independent);
2. beam search: sets grow one patch at a time from the ``pool`` best-ranked patches; each level
   keeps the ``beam`` most probable insufficient sets; sufficient sets stop growing (and no
   candidate containing one is tried: it would not be minimal); the beam is spread: a set that
   shares half its patches with a better one waits until the beam has room, so that a second
   region gets explored beside the first; the search of an image ends at ``max_patches``, after
   ``max_sets`` sufficient sets, once ``roots`` of them are diverse, or ``extra`` levels past its
   first one;
3. elimination, for an image the beam left without a sufficient set (its evidence spreads over
   more than ``max_patches`` patches, e.g. a close-up filling the frame): the smallest sufficient
   prefix of the ranking, probed every ``grid`` patches, then each of its patches, least-ranked
   first, blurred for good when the rest still suffices; the whole image always suffices, so
   every image gets a set (and a root) for about one call per patch;
4. minimality: each sufficient set's children (one patch removed) are classified; a set with a
   sufficient child is replaced by its best such child until none has one;
5. roots: greedily, by size then probability, at most ``roots`` minimal sets that share less
   than ``max_overlap`` (half) of the smaller set's patches with each other.

The graph of an image is its roots and each root's children with their probability (rows of
``Attribution.rows``). The joint map is the union of the roots' patches weighted by the share of
roots holding each one. Everything is deterministic: ties break by patch index, the blur in-fill
draws nothing random, and an image's search never reads its batch partners (the seeds are
accepted for the common interface and not needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fidoflow.pipeline.imaging.filters import gaussian_blur
from fidoflow.pipeline.imaging.infill import make_infill
from fidoflow.pipeline.methods.base import Attribution, Method, image_generators
from fidoflow.pipeline.methods.registry import register
from fidoflow.pipeline.perturbation import Perturbation

PatchSet = tuple[int, ...]  # sorted patch indices (row-major over the grid)
Root = tuple[PatchSet, float, list[tuple[PatchSet, float]]]  # set, probability, its children
Request = tuple[int, PatchSet]  # (image, patch set)


@dataclass(frozen=True)
class SagConfig:
    """The paper's setting (7 × 7 patches, blur, 90 % of the clean probability, beam 3 as the
    published code, 3 roots) in ≈ 250 Lite0 calls per photo: sets past 8 patches come from
    the elimination, one call per patch, rather than from more beam levels."""

    grid: int = 7
    threshold: float = 0.9
    beam: int = 3
    pool: int = 10
    max_patches: int = 8
    max_sets: int = 20
    extra: int = 2
    roots: int = 3
    max_overlap: float = 0.5
    infill: str = "blur"
    feather: float = 0.25  # soft patch edges: Gaussian sigma in patch widths (0: hard seams)
    batch: int = 64


@dataclass
class _Search:
    """One image's search state; ``known`` holds every set classified so far."""

    clean: float
    bar: float
    ranked: list[int]
    beam: list[PatchSet] = field(default_factory=list)
    known: dict[PatchSet, float] = field(default_factory=dict)
    sufficient: dict[PatchSet, float] = field(default_factory=dict)
    first_level: int | None = None
    done: bool = False


def patch_masks(sets: Sequence[PatchSet], grid: int, size: tuple[int, int],
                feather: float = 0.0) -> torch.Tensor:
    """(n, 1, H, W) masks keeping the patches of each set; with ``feather`` > 0 their edges are
    Gaussian ramps (sigma ``feather`` patch widths, 0.5 on the patch border, as the published
    code's bilinear upsampling of the 7 × 7 mask): hard seams between sharp and blurred cells
    are an edge pattern a CNN reads as evidence against the class."""
    cells = torch.zeros(len(sets), grid * grid)
    for row, patches in enumerate(sets):
        cells[row, list(patches)] = 1.0
    masks = F.interpolate(cells.view(-1, 1, grid, grid), size=size, mode="nearest")
    return gaussian_blur(masks, feather * min(size) / grid) if feather > 0 else masks


def overlapping(a: PatchSet, b: PatchSet, share: float) -> bool:
    """``a`` and ``b`` share at least ``share`` of the smaller one's patches."""
    return len(set(a) & set(b)) >= share * min(len(a), len(b))


def diverse(sets: Sequence[tuple[PatchSet, float]], k: int, share: float
            ) -> list[tuple[PatchSet, float]]:
    """At most ``k`` sets, smallest and most probable first, none overlapping (``share``) one
    taken before: two pairs sharing a patch are one place, not two ways."""
    chosen: list[tuple[PatchSet, float]] = []
    for s, p in sorted(sets, key=lambda e: (len(e[0]), -e[1], e[0])):
        if len(chosen) == k:
            break
        if not any(overlapping(s, c, share) for c, _ in chosen):
            chosen.append((s, p))
    return chosen


def spread_beam(ranked: Sequence[PatchSet], width: int) -> list[PatchSet]:
    """The beam: the most probable sets (``ranked`` best first) that share fewer than half
    their patches with every set taken before, topped up with the best of the others. Without
    it the beam fills with near copies of one region and never reaches a second one."""
    beam: list[PatchSet] = []
    for s in ranked:
        if len(beam) == width:
            return beam
        if not any(overlapping(s, b, 0.5) for b in beam):
            beam.append(s)
    return beam + [s for s in ranked if s not in beam][:width - len(beam)]


def children(s: PatchSet) -> list[PatchSet]:
    """``s`` with one patch removed, each way."""
    return [s[:k] + s[k + 1:] for k in range(len(s))] if len(s) > 1 else []


@register("sag", SagConfig, "Structured attention graphs (Shitole et al. 2021): minimal patch sets "
          "that keep the target, diverse roots and their one-patch-removed children")
class Sag(Method):
    @classmethod
    def passes(cls, config: SagConfig) -> float:
        """The ranking (two per patch), then about as many again (bench/RESULTS.md: ~250
        Lite0 calls a photo on a 7 × 7 grid)."""
        return 5.0 * config.grid ** 2 + 10

    scalar_names = ("roots", "clean_prob", "root_prob", "forwards")
    min_batch = 1  # images share classifier batches, never results: any split will do
    table = "sag"

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                      requests: Sequence[Request], keep: bool = True) -> list[float]:
        """Target probability of image i with set s kept (``keep``) or blurred, for every
        (i, s) in ``requests``: all images' candidates in shared batches of ``batch``."""
        cfg, size = self.config, tuple(images.shape[-2:])
        out: list[float] = []
        for start in range(0, len(requests), cfg.batch):
            chunk = requests[start:start + cfg.batch]
            index = torch.tensor([i for i, _ in chunk], device=images.device)
            masks = patch_masks([s for _, s in chunk], cfg.grid, size, cfg.feather).to(images)
            if not keep:
                masks = 1.0 - masks
            scene = Perturbation(self.model, images, fills, targets).select(index)
            out += scene.probability(masks[:, 0]).tolist()
        return out

    def classify(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                 states: list[_Search], forwards: list[int], requests: Sequence[Request]) -> None:
        """Classify the kept sets of ``requests`` not classified before (into ``known``)."""
        fresh = list(dict.fromkeys(r for r in requests if r[1] not in states[r[0]].known))
        for (i, s), prob in zip(fresh, self.probabilities(images, fills, targets, fresh),
                                strict=True):
            states[i].known[s] = prob
            forwards[i] += 1

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        cfg = self.config
        n = len(images)
        fills = make_infill(images, cfg.infill, image_generators(seeds))
        forwards = [0] * n
        states = self.rank(images, fills, targets, forwards)
        self.beam_search(images, fills, targets, states, forwards)
        self.eliminate(images, fills, targets, states, forwards)
        found = self.roots_of(images, fills, targets, states, forwards)
        graphs, joint, scalars = [], torch.zeros(n, cfg.grid, cfg.grid), []
        for i, (state, roots) in enumerate(zip(states, found, strict=True)):
            graphs += self.graph_rows(i, roots)
            for patches, _, _ in roots:
                joint[i].view(-1)[list(patches)] += 1.0 / len(roots)
            scalars.append([len(roots), state.clean, max((r[1] for r in roots), default=0.0),
                            forwards[i]])
        values = torch.tensor(scalars, dtype=torch.float64)
        return Attribution(targets, {"joint": joint},
                           {name: values[:, k] for k, name in enumerate(self.scalar_names)},
                           graphs)

    def rank(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
             forwards: list[int]) -> list[_Search]:
        """Each image's search state, its patches ranked by p(keep it alone) + p(clean) −
        p(blur it alone)."""
        cfg = self.config
        n, cells = len(images), cfg.grid ** 2
        every = range(n)
        clean = self.probabilities(images, fills, targets, [(i, tuple(range(cells)))
                                                            for i in every])
        singles = [(i, (p,)) for i in every for p in range(cells)]
        kept = self.probabilities(images, fills, targets, singles)
        blurred = self.probabilities(images, fills, targets, singles, keep=False)
        scores = torch.tensor(kept).view(n, cells) + torch.tensor(clean)[:, None] \
            - torch.tensor(blurred).view(n, cells)
        states = []
        for i in every:
            order = sorted(range(cells), key=lambda p, i=i: (-float(scores[i, p]), p))
            known = {(p,): kept[i * cells + p] for p in range(cells)}
            known[tuple(range(cells))] = clean[i]
            states.append(_Search(clean[i], cfg.threshold * clean[i], order, known=known))
            forwards[i] += 1 + 2 * cells
        return states

    def beam_search(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                    states: list[_Search], forwards: list[int]) -> None:
        """Grow sets level by level; every live image's candidates of a level in one pass."""
        cfg = self.config
        for level in range(1, cfg.max_patches + 1):
            live = [i for i, s in enumerate(states) if not s.done]
            candidates = {i: self.candidates(states[i], level) for i in live}
            self.classify(images, fills, targets, states, forwards,
                          [(i, s) for i in live for s in candidates[i]])
            for i in live:
                self.advance(states[i], candidates[i], level)

    def candidates(self, state: _Search, level: int) -> list[PatchSet]:
        """The beam's sets grown by one of the ``pool`` best-ranked patches, leaving out the
        supersets of a sufficient set (they would not be minimal)."""
        pool = self.config.pool
        parents = state.beam if level > 1 else [()]
        grown = dict.fromkeys(tuple(sorted((*parent, p))) for parent in parents
                              for p in state.ranked[:pool] if p not in parent)
        return [s for s in grown if not any(set(f) <= set(s) for f in state.sufficient)]

    def advance(self, state: _Search, candidates: list[PatchSet], level: int) -> None:
        """Record the level's sufficient sets, spread the beam over the rest, decide whether
        the image's search is over."""
        cfg = self.config
        scored = sorted(((state.known[s], s) for s in candidates), key=lambda r: (-r[0], r[1]))
        found = {s: p for p, s in scored if p >= state.bar}
        state.sufficient.update(found)
        if found and state.first_level is None:
            state.first_level = level
        state.beam = spread_beam([s for p, s in scored if p < state.bar], cfg.beam)
        state.done = (not state.beam or len(state.sufficient) >= cfg.max_sets
                      or len(diverse(list(state.sufficient.items()), cfg.roots,
                                     cfg.max_overlap)) == cfg.roots
                      or (state.first_level is not None
                          and level >= state.first_level + cfg.extra))

    def eliminate(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                  states: list[_Search], forwards: list[int]) -> None:
        """One sufficient set for each image the beam left without any (its evidence spreads
        over more than ``max_patches`` patches, e.g. a close-up filling the frame): the
        smallest sufficient prefix of the ranking (probed every ``grid`` patches), then each of
        its patches, least-ranked first, blurred for good when the rest still suffices. One
        call per probe and per patch, against a beam's level count that grows with the size."""
        cfg, cells = self.config, self.config.grid ** 2
        lost = [i for i, s in enumerate(states) if not s.sufficient]
        sizes = [*range(cfg.max_patches + 1, cells, cfg.grid), cells]
        prefixes = {i: [tuple(sorted(states[i].ranked[:k])) for k in sizes] for i in lost}
        self.classify(images, fills, targets, states, forwards,
                      [(i, s) for i in lost for s in prefixes[i]])
        kept = {i: next(s for s in prefixes[i] if states[i].known[s] >= states[i].bar)
                for i in lost}
        order = {i: [p for p in reversed(states[i].ranked) if p in kept[i]] for i in lost}
        for step in range(max((len(o) for o in order.values()), default=0)):
            trials = {i: tuple(c for c in kept[i] if c != order[i][step])
                      for i in lost if step < len(order[i]) and len(kept[i]) > 1}
            self.classify(images, fills, targets, states, forwards, list(trials.items()))
            kept.update({i: s for i, s in trials.items() if states[i].known[s] >= states[i].bar})
        for i in lost:
            states[i].sufficient[kept[i]] = states[i].known[kept[i]]

    def roots_of(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                 states: list[_Search], forwards: list[int]) -> list[list[Root]]:
        """Per image, at most ``roots`` diverse minimal sufficient sets with their children."""
        cfg = self.config
        minimal = self.minimal_sets(images, fills, targets, states, forwards,
                                    [list(s.sufficient) for s in states])
        out = []
        for state, sets in zip(states, minimal, strict=True):
            chosen = diverse([(s, state.known[s]) for s in sets], cfg.roots, cfg.max_overlap)
            out.append([(s, p, [(c, state.known[c]) for c in children(s)]) for s, p in chosen])
        return out

    def minimal_sets(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                     states: list[_Search], forwards: list[int],
                     pending: list[list[PatchSet]]) -> list[list[PatchSet]]:
        """Per image, the sets of ``pending`` made minimal: a set with a sufficient child is
        replaced by its most probable one until none has one; one batched pass per round."""
        result: list[set[PatchSet]] = [set() for _ in states]
        while any(pending):
            self.classify(images, fills, targets, states, forwards,
                          [(i, c) for i, sets in enumerate(pending) for s in sets
                           for c in children(s)])
            nxt: list[list[PatchSet]] = [[] for _ in states]
            for i, sets in enumerate(pending):
                state = states[i]
                for s in sets:
                    good = [c for c in children(s) if state.known[c] >= state.bar]
                    if not good:
                        result[i].add(s)
                        continue
                    best = min(good, key=lambda c: (-state.known[c], c))
                    if best not in result[i] and best not in nxt[i]:
                        nxt[i].append(best)
            pending = nxt
        return [sorted(r) for r in result]

    def graph_rows(self, image: int, roots: list[Root]) -> list[dict]:
        """The graph table's rows of one image: each root, then its children."""
        cfg, rows = self.config, []
        for rank, (patches, prob, kids) in enumerate(roots):
            node = rank * (cfg.grid ** 2 + 1)
            rows.append({"image": image, "node": node, "patches": list(patches),
                         "probability": prob, "parent": None, "root": True, "grid": cfg.grid})
            rows += [{"image": image, "node": node + k, "patches": list(child),
                      "probability": child_prob, "parent": node, "root": False,
                      "grid": cfg.grid}
                     for k, (child, child_prob) in enumerate(kids, start=1)]
        return rows
