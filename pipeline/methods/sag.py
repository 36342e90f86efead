"""Structured attention graphs (Shitole et al., NeurIPS 2021): every small way the model can reach
its decision, not one heat map.

The model input is cut into a ``grid`` × ``grid`` lattice of patches. A patch set is *sufficient*
when the image that keeps those patches and blurs the rest holds the target's probability at
``threshold`` × its clean probability or more. Steps, each one batched classifier pass over the
candidates of every image of the batch:

1. ranking: every patch alone kept (insertion) and every patch alone blurred (occlusion); a
   patch's score is p(keep only it) + p(clean) − p(blur only it). This is the method's own cheap
   perturbation map (it does not read another method's map, so a run's methods stay independent);
2. beam search: sets grow one patch at a time from the ``pool`` best-ranked patches; each level
   keeps the ``beam`` most probable insufficient sets; sufficient sets stop growing (and no
   candidate containing one is tried: it would not be minimal); the beam is spread: a set that
   shares half its patches with a better one waits until the beam has room, so that a second
   region gets explored beside the first; the search of an image ends at
   ``max_patches``, after ``max_sets`` sufficient sets, or ``extra`` levels past its first one;
3. minimality: each sufficient set's children (one patch removed) are classified; a set with a
   sufficient child is replaced by its best such child until none has one;
4. roots: greedily, by size then probability, at most ``roots`` minimal sets that share less
   than ``max_overlap`` (half) of the smaller set's patches with each other.

The graph of an image is its roots and each root's children with their probability (rows of
``Attribution.graphs``). The joint map is the union of the roots' patches weighted by the share of
roots holding each one; an image without any sufficient set within the search falls back to its
ranking scores (scalar ``roots`` = 0 says so). Everything is deterministic: ties break by patch
index, the blur in-fill draws nothing random, and an image's search never reads its batch
partners (the seeds are accepted for the common interface and not needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.imaging.infill import make_infill
from pipeline.methods.base import Attribution, Method, image_generators
from pipeline.methods.registry import register

PatchSet = tuple[int, ...]  # sorted patch indices (row-major over the grid)


@dataclass(frozen=True)
class SagConfig:
    """The paper's setting: 7 × 7 patches, blur, 90 % of the clean probability, beam ~5, 3 roots."""

    grid: int = 7
    threshold: float = 0.9
    beam: int = 5
    pool: int = 16
    max_patches: int = 12
    max_sets: int = 20
    extra: int = 2
    roots: int = 3
    max_overlap: float = 0.5
    infill: str = "blur"
    batch: int = 64


@dataclass
class _Search:
    """One image's search state."""

    clean: float
    ranked: list[int]
    beam: list[PatchSet]
    sufficient: dict[PatchSet, float]
    first_level: int | None = None
    done: bool = False


def patch_masks(sets: Sequence[PatchSet], grid: int, size: tuple[int, int]) -> torch.Tensor:
    """(n, 1, H, W) binary masks keeping the patches of each set (nearest-neighbour cells)."""
    cells = torch.zeros(len(sets), grid * grid)
    for row, patches in enumerate(sets):
        cells[row, list(patches)] = 1.0
    return F.interpolate(cells.view(-1, 1, grid, grid), size=size, mode="nearest")


def spread_beam(ranked: Sequence[PatchSet], width: int) -> list[PatchSet]:
    """The beam: the most probable sets (``ranked`` best first) that share fewer than half
    their patches with every set taken before, topped up with the best of the others. Without
    it the beam fills with near copies of one region and never reaches a second one."""
    beam: list[PatchSet] = []
    for s in ranked:
        if len(beam) == width:
            return beam
        if all(2 * len(set(s) & set(b)) < min(len(s), len(b)) for b in beam):
            beam.append(s)
    return beam + [s for s in ranked if s not in beam][:width - len(beam)]


@register("sag", SagConfig, "Structured attention graphs (Shitole et al. 2021): minimal patch sets "
          "that keep the target, diverse roots and their one-patch-removed children")
class Sag(Method):
    scalar_names = ("roots", "clean_prob", "root_prob", "forwards")
    min_batch = 1  # images share classifier batches, never results: any split will do
    has_graphs = True

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                      requests: Sequence[tuple[int, PatchSet]], keep: bool = True) -> list[float]:
        """Target probability of image i with set s kept (``keep``) or blurred, for every
        (i, s) in ``requests``: all images' candidates in shared batches of ``batch``."""
        cfg, size = self.config, tuple(images.shape[-2:])
        out: list[float] = []
        for start in range(0, len(requests), cfg.batch):
            chunk = requests[start:start + cfg.batch]
            index = torch.tensor([i for i, _ in chunk], device=images.device)
            masks = patch_masks([s for _, s in chunk], cfg.grid, size).to(images)
            if not keep:
                masks = 1.0 - masks
            x = fills[index] + masks * (images[index] - fills[index])
            probs = self.model(x).float().softmax(dim=1)
            out += probs.gather(1, targets[index][:, None]).squeeze(1).tolist()
        return out

    def explain(self, images: torch.Tensor, targets: torch.Tensor,
                seeds: list[int]) -> Attribution:
        cfg = self.config
        n, cells = len(images), cfg.grid * cfg.grid
        fills = make_infill(images, cfg.infill, image_generators(seeds))
        every = list(range(n))
        forwards = [0] * n
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
            states.append(_Search(clean[i], order, [], {}))
            forwards[i] += 1 + 2 * cells
        self.beam_search(images, fills, targets, states, forwards)
        graphs, joint, scalars = [], torch.zeros(n, cfg.grid, cfg.grid), []
        minimal = self.minimal_sets(images, fills, targets, states, forwards)
        for i, state in enumerate(states):
            roots = self.diverse(minimal[i])
            if roots:
                for rank, (patches, prob, children) in enumerate(roots):
                    node = rank * (cells + 1)
                    graphs.append({"image": i, "node": node, "patches": list(patches),
                                   "probability": prob, "parent": None, "root": True,
                                   "grid": cfg.grid})
                    for k, (child, child_prob) in enumerate(children, start=1):
                        graphs.append({"image": i, "node": node + k, "patches": list(child),
                                       "probability": child_prob, "parent": node,
                                       "root": False, "grid": cfg.grid})
                    joint[i].view(-1)[list(patches)] += 1.0 / len(roots)
            else:
                fallback = scores[i].clamp_min(0)
                joint[i] = (fallback / fallback.max().clamp_min(1e-12)).view(cfg.grid, cfg.grid)
            scalars.append([len(roots), state.clean, max((r[1] for r in roots), default=0.0),
                            forwards[i]])
        values = torch.tensor(scalars, dtype=torch.float64)
        return Attribution(targets, {"joint": joint},
                           {name: values[:, k] for k, name in enumerate(self.scalar_names)},
                           graphs)

    def beam_search(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                    states: list[_Search], forwards: list[int]) -> None:
        """Grow sets level by level; every live image's candidates of a level in one pass."""
        cfg = self.config
        for level in range(1, cfg.max_patches + 1):
            requests: list[tuple[int, PatchSet]] = []
            for i, state in enumerate(states):
                if state.done:
                    continue
                pool = state.ranked[:cfg.pool]
                parents = state.beam if level > 1 else [()]
                fresh = dict.fromkeys(
                    tuple(sorted((*parent, p))) for parent in parents for p in pool
                    if p not in parent)
                requests += [(i, s) for s in fresh
                             if not any(set(found) <= set(s) for found in state.sufficient)]
            if not requests:
                break
            probs = self.probabilities(images, fills, targets, requests)
            by_image: dict[int, list[tuple[float, PatchSet]]] = {}
            for (i, s), prob in zip(requests, probs, strict=True):
                forwards[i] += 1
                by_image.setdefault(i, []).append((prob, s))
            for i, state in enumerate(states):
                if state.done:
                    continue
                found = [(p, s) for p, s in by_image.get(i, []) if p >= cfg.threshold * state.clean]
                state.sufficient.update({s: p for p, s in found})
                if found and state.first_level is None:
                    state.first_level = level
                rest = sorted(((p, s) for p, s in by_image.get(i, [])
                               if p < cfg.threshold * state.clean), key=lambda r: (-r[0], r[1]))
                state.beam = spread_beam([s for _, s in rest], cfg.beam)
                state.done = (not state.beam or len(state.sufficient) >= cfg.max_sets
                              or (state.first_level is not None
                                  and level >= state.first_level + cfg.extra))

    def minimal_sets(self, images: torch.Tensor, fills: torch.Tensor, targets: torch.Tensor,
                     states: list[_Search], forwards: list[int]
                     ) -> list[list[tuple[PatchSet, float, list[tuple[PatchSet, float]]]]]:
        """Per image, its sufficient sets made minimal, each with its children and their
        probabilities; one batched pass per descent round over all images."""
        cfg = self.config
        pending = [dict(s.sufficient) for s in states]
        known: list[dict[PatchSet, float]] = [dict(s.sufficient) for s in states]
        result: list[dict[PatchSet, tuple[float, list[tuple[PatchSet, float]]]]] = [
            {} for _ in states]
        while any(pending):
            requests = sorted({(i, tuple(c for c in s if c != drop))
                               for i, sets in enumerate(pending) for s in sets if len(s) > 1
                               for drop in s} - {(i, s) for i, k in enumerate(known) for s in k})
            for (i, s), prob in zip(requests, self.probabilities(images, fills, targets,
                                                                 requests), strict=True):
                known[i][s] = prob
                forwards[i] += 1
            nxt: list[dict[PatchSet, float]] = [{} for _ in states]
            for i, sets in enumerate(pending):
                bar = cfg.threshold * states[i].clean
                for s, prob in sets.items():
                    children = [(tuple(c for c in s if c != d), known[i].get(
                        tuple(c for c in s if c != d), 0.0)) for d in s] if len(s) > 1 else []
                    good = sorted((c for c in children if c[1] >= bar), key=lambda c: (-c[1], c[0]))
                    if good:
                        if good[0][0] not in result[i]:
                            nxt[i][good[0][0]] = good[0][1]
                    else:
                        result[i][s] = (prob, children)
            pending = nxt
        return [[(s, p, ch) for s, (p, ch) in r.items()] for r in result]

    def diverse(self, sets: list[tuple[PatchSet, float, list[tuple[PatchSet, float]]]]
                ) -> list[tuple[PatchSet, float, list[tuple[PatchSet, float]]]]:
        """At most ``roots`` sets, smallest and most probable first, that share less than
        ``max_overlap`` of the smaller set's patches with every one chosen before (two pairs
        sharing a patch are one place, not two ways)."""
        cfg = self.config
        chosen: list[tuple[PatchSet, float, list[tuple[PatchSet, float]]]] = []
        for entry in sorted(sets, key=lambda e: (len(e[0]), -e[1], e[0])):
            if all(len(set(entry[0]) & set(c[0])) < cfg.max_overlap * min(len(entry[0]),
                                                                            len(c[0]))
                   for c in chosen):
                chosen.append(entry)
            if len(chosen) == cfg.roots:
                break
        return chosen
