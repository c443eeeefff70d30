"""Correlation traps (`analyze --randomize`): each matrix with its entries permuted, solved on the same engine.

Permuting the entries keeps their distribution and destroys every correlation between rows and
columns, so the permuted matrix's spectrum is what W's entries give without structure: an MP bulk,
unless a few entries are so large that they alone make a spike (a "correlation trap": a rank-one
piece w_ij·e_i·e_jᵀ stands out of the noise once |w_ij| passes σ·(n·m)^(1/4), the BBP threshold for
a rank-one signal along coordinate vectors). Reported per matrix:

  rand_lambda_max  the largest eigenvalue of the (first) permuted matrix
  rand_distance    the Jensen–Shannon distance (base 2, so in [0, 1]) between the two spectra's
                   histograms on a common grid in log10 λ spanning both (2·m^(1/3) bins, Rice's rule,
                   so that two noise spectra of m eigenvalues read near 0): 0 when training left the
                   spectrum as noise would have it, 1 when the two do not overlap
  traps            eigenvalues of the (first) permuted matrix above its own MP spike threshold (spectra/mp_bulk.py)
  trap_z           how far the permuted matrix's largest eigenvalue stands above that threshold, in
                   Tracy–Widom units (the threshold's own scale), the median over the permutations
                   solved; one permutation's value scatters by 2–3 units, so a matrix near the
                   threshold has a spike in some permutations and not in others
  trap_z_low       a lower bound on that median which is wrong with probability at most 1 %: the k-th
                   smallest of the n values solved, k the most for which fewer than k of n fair coin
                   flips come up with probability <= 1 % (n = 7: the smallest; n = 15: the 3rd);
                   empty for a matrix given fewer than 7 permutations
  trap_share       the share of the permutations solved with a spike (trap_z > 0 in that permutation)
  permutations     how many permutations were solved: one for a matrix whose first has no spike at all
                   (trap_z <= MORE_ABOVE: noise reads -6 to -1); for the others, more until the bounds
                   on the median both lie on one side of 5 (7 at least, all on that side), or until
                   --permutations (15)
  trap_entries     for a matrix with the traps verdict: how many of its largest entries, set to zero,
                   dissolve them (those above the BBP threshold first, then doubling; a cut is accepted only
                   after a full solve of the permuted matrix shows no eigenvalue above its spike threshold), and
                   trap_max_entry the largest magnitude among them; trap_where lists the first few as
                   (row, col) = value

The `traps` verdict (verdicts.TRAP_Z) needs trap_z_low >= 5: the median permutation's spike stands 5
Tracy–Widom units above the threshold, shown with 99 % confidence by the permutations solved. A matrix
whose spike stands above 5 in half of its permutations gets the verdict in about 1 % of seeds, one
with 90 % of them in most (86 %) and one with 95 % in 98 %; a matrix between those can go either way,
and its trap_z, trap_z_low and trap_share show how close it is. Each permutation is seeded by the
run's seed, the matrix's name and its index, so a run repeats.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from alphaspec.spectra.eigenvalues import scaled_eigenvalues
from alphaspec.spectra.mp_bulk import mp_bulk, spike_threshold, tracy_widom_unit
from alphaspec.spectra.norms import ldexp
from alphaspec.spectra.verdicts import PERMUTATIONS, TRAP_Z

RANDOMIZED_SUFFIX = "#randomized"  # the permuted matrix's spectrum, beside the matrix's own in saved spectra
JS_BINS = (8, 100)  # bins of the common grid: Rice's rule, 2·m^(1/3) for m eigenvalues, within these bounds
MAX_TRAP_ENTRIES = 4096  # the search for the entries behind the traps stops here
TRAPS_LISTED = 5  # entries named in trap_where
TRAP_LEVEL = 0.01  # the chance that either bound of the median (median_bounds) lies past it
MORE_ABOVE = 0.0  # a first permutation with a spike (above 0) gets the others; noise reads -6 to -1


NAN_RANDOMIZED = {"rand_lambda_max": math.nan, "rand_distance": math.nan, "traps": 0, "trap_z": math.nan, "trap_z_low": math.nan,
                  "trap_share": math.nan, "permutations": 0, "trap_entries": 0, "trap_max_entry": math.nan,
                  "trap_where": ""}  # a matrix with NaN/Inf entries


def matrix_seed(seed: int, name: str, index: int = 0) -> int:
    """The seed of permutation `index` of one matrix: the same for the same seed and name, on every device and run."""
    key = name if index == 0 else f"{name}#{index}"
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (1 << 62)


PERMUTATION_BLOCK = 1 << 20  # entries shuffled at a time: a block's gather stays in cache
MAX_BLOCKS = 256  # larger matrices take larger blocks, so that the pieces moved between blocks stay few


def permuted(w: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Each (rows, cols) matrix of a (B, rows, cols) batch with its entries in a seeded, uniformly random order."""
    out = torch.empty_like(w)
    for i, seed in enumerate(seeds):
        out[i] = shuffled(w[i].reshape(-1), seed).reshape(w.shape[-2:])
    return out


def _block_order(size: int, seed: int, device: torch.device) -> torch.Tensor:
    """A seeded uniform permutation of range(size), drawn on the CPU whatever the device: the same
    permutation (and so the same numbers) on a GPU."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).to(device)


def shuffled(x: torch.Tensor, seed: int, block: int = PERMUTATION_BLOCK) -> torch.Tensor:
    """The entries of the 1-D `x` in a uniformly random order, seeded: one `randperm` gather for up to `block`
    entries; above it a gather of the whole would miss the cache at every entry (45 ns each for a 168M-entry
    embedding), so it is done blockwise and exactly (Rao–Sandelius with fixed block sizes):
    each input block is shuffled; how many of block i's entries land in output block j is drawn as a uniform
    permutation draws it (a multivariate hypergeometric draw per input block from the output blocks' free
    room), those runs are copied whole, and each output block is shuffled again."""
    n = x.numel()
    if n <= block:
        return x.index_select(0, _block_order(n, seed, x.device))
    k = min(-(-n // block), MAX_BLOCKS)
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    starts = [0, *np.cumsum(sizes).tolist()]
    rng = np.random.default_rng([seed, k])
    room, table = sizes.copy(), np.empty((k, k), dtype=np.int64)  # table[i, j]: entries of block i sent to j
    for i in range(k):
        table[i] = rng.multivariate_hypergeometric(room, int(sizes[i]))
        room -= table[i]
    src = np.asarray(starts[:-1])[:, None] + np.cumsum(table, axis=1) - table  # where each run starts in its input block
    dst = np.asarray(starts[:-1])[None, :] + np.cumsum(table, axis=0) - table  # and where it lands in its output block
    mixed, out = torch.empty_like(x), torch.empty_like(x)
    for i in range(k):  # each input block shuffled
        a, b = starts[i], starts[i + 1]
        torch.index_select(x[a:b], 0, _block_order(b - a, seed + 1 + i, x.device), out=mixed[a:b])
    for i, j in zip(*np.nonzero(table), strict=True):  # runs copied whole to their output block
        s, d, c = int(src[i, j]), int(dst[i, j]), int(table[i, j])
        out[d:d + c] = mixed[s:s + c]
    for j in range(k):  # each output block shuffled
        a, b = starts[j], starts[j + 1]
        torch.index_select(out[a:b], 0, _block_order(b - a, seed + 1 + k + j, x.device), out=mixed[a:b])
    return mixed


def js_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2) between two spectra's histograms on a common log10 grid (zeros left out)."""
    a, b = a[a > 0], b[b > 0]
    if not len(a) or not len(b):
        return math.nan
    la, lb = np.log10(a), np.log10(b)
    lo, hi = min(la.min(), lb.min()), max(la.max(), lb.max())
    bins = int(np.clip(round(2 * max(len(la), len(lb)) ** (1 / 3)), *JS_BINS))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    p, q = (np.histogram(x, edges)[0] / len(x) for x in (la, lb))
    mid = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = (np.where(p > 0, p * np.log2(p / mid), 0.0).sum() + np.where(q > 0, q * np.log2(q / mid), 0.0).sum()) / 2
    return float(math.sqrt(max(kl, 0.0)))


def spike_z(eigs: torch.Tensor, rows: int, cols: int) -> float:
    """(λ_max − spike threshold) / Tracy–Widom unit of one ascending spectrum, with σ from its own bulk (scale-free)."""
    sigma = mp_bulk(eigs, rows, cols)["sigma_mp"]
    if not sigma > 0:
        return math.nan
    return (float(eigs[-1]) - spike_threshold(sigma * sigma, rows, cols)) / tracy_widom_unit(sigma * sigma, rows, cols)


def median_bounds(z: np.ndarray | list[float], level: float = TRAP_LEVEL) -> tuple[float, float]:
    """Distribution-free bounds on the median of the permutations' trap_z from the values solved: order
    statistics X_(k) and X_(n+1-k), with k the most for which P(Binomial(n, 1/2) < k) <= level, so each bound is
    past the median with probability at most `level`; NaN when too few values were solved (n < 5 at 5 %)."""
    s = np.sort(np.asarray(z, dtype=float))
    n = len(s)
    below = np.cumsum([math.comb(n, i) for i in range(n + 1)]) / 2.0**n  # P(Binomial(n, 1/2) <= i)
    k = int((below <= level).sum())
    return (float(s[k - 1]), float(s[n - k])) if k else (math.nan, math.nan)


def undecided(z: list[float]) -> bool:
    """Whether the permutations solved do not yet say on which side of TRAP_Z the median lies."""
    low, high = median_bounds(z)
    return not (low >= TRAP_Z or high < TRAP_Z)


def randomized_rows(w: torch.Tensor, eigs: list[torch.Tensor], names: list[str], seed: int, dev: torch.device,
                    precision: str, permutations: int = PERMUTATIONS) -> list[dict]:
    """The randomized columns of each finite matrix of a batch, given its own scaled spectrum `eigs[i]`."""
    seeds = [matrix_seed(seed, n) for n in names]
    rand, exponents = scaled_eigenvalues(permuted(w, seeds), dev, precision)
    rows, cols = w.shape[-2:]
    zs = [[spike_z(rand[i], rows, cols)] for i in range(len(names))]
    more = [i for i in range(len(names)) if zs[i][0] > MORE_ABOVE] if permutations > 1 else []
    for k in range(1, permutations):  # one permutation of the matrices near a spike at a time: memory as the first
        more = [i for i in more if undecided(zs[i])]  # stop once the median is known to lie on one side of TRAP_Z
        if not more:
            break
        extra, _ = scaled_eigenvalues(permuted(w[more], [matrix_seed(seed, names[i], k) for i in more]), dev,
                                      precision)
        for j, i in enumerate(more):
            zs[i].append(spike_z(extra[j], rows, cols))
    out = []
    for i in range(len(names)):
        exponent = int(exponents[i])
        bulk = mp_bulk(rand[i], rows, cols, exponent)
        z = np.asarray(zs[i])
        row = {"_randomized": torch.ldexp(rand[i], torch.tensor(2.0 * exponent, dtype=rand.dtype, device=rand.device)),
               "rand_lambda_max": ldexp(float(rand[i][-1]), 2 * exponent),
               "rand_distance": js_distance(eigs[i].cpu().numpy(), rand[i].cpu().numpy()), "traps": bulk["num_spikes"],
               "trap_z": float(np.median(z)), "trap_z_low": median_bounds(z)[0], "trap_share": float(np.mean(z > 0)),
               "permutations": len(z),
               "trap_entries": 0, "trap_max_entry": math.nan, "trap_where": ""}
        if bulk["num_spikes"] and row["trap_z_low"] >= TRAP_Z:  # the entries behind a traps verdict
            row |= trap_sources(w[i], seeds[i], bulk["sigma_mp"], dev, precision)
        out.append(row)
    return out


def spikes_of(w: torch.Tensor, dev: torch.device, precision: str) -> int:
    """Eigenvalues above the spike threshold in the full spectrum of `w` (already permuted)."""
    eigs, _ = scaled_eigenvalues(w.unsqueeze(0), dev, precision)
    return mp_bulk(eigs[0], *w.shape)["num_spikes"]


POWER_ITERATIONS, POWER_BLOCK = 15, 4


def top_eigenvalue_lower_bound(w: torch.Tensor, seed: int) -> float:
    """A lower bound on the largest eigenvalue of WᵀW (block power iteration, Rayleigh–Ritz): a few products
    instead of a solve. Above the threshold it proves a spike is still there; below it proves nothing."""
    a = w.double()
    start = torch.randn(a.shape[1], POWER_BLOCK, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    v = torch.linalg.qr(start.to(a.device)).Q  # drawn on the CPU: the same on every device
    for _ in range(POWER_ITERATIONS):
        v = torch.linalg.qr(a.mT @ (a @ v)).Q
    av = a @ v
    return float(torch.linalg.eigvalsh(av.mT @ av)[-1])


def trap_sources(w: torch.Tensor, seed: int, sigma: float, dev: torch.device | None = None,
                 precision: str = "fp64") -> dict:
    """The fewest of the matrix's largest entries (those above the BBP threshold, then doubling) whose removal
    (set to 0) leaves its permutation without a spike: a cut whose power-iteration bound still stands above the
    threshold is passed over at once; any other is verified by a full solve of the cut matrix permuted as the
    first permutation was. The entries are named by (row, col)."""
    rows, cols = w.shape
    flat = w.reshape(-1)
    order = torch.topk(flat.abs(), min(MAX_TRAP_ENTRIES, flat.numel())).indices  # largest first
    bbp = sigma * (rows * cols) ** 0.25  # a single entry above this stands out of the noise
    threshold = spike_threshold(sigma * sigma, rows, cols)

    def dissolved(k: int) -> bool:
        cut = flat.clone()
        cut[order[:k]] = 0
        mixed = permuted(cut.reshape(1, rows, cols), [seed])[0]  # as the first permutation mixed W
        if top_eigenvalue_lower_bound(mixed, seed) > threshold:
            return False  # a lower bound above the threshold: the spike is certainly still there
        return spikes_of(mixed, dev or w.device, precision) == 0

    k = max(int((flat[order].abs().double() > bbp).sum()), 1)
    while not dissolved(k):
        if k >= len(order):
            return {"trap_entries": math.nan, "trap_max_entry": float(flat[order[0]].abs()),
                    "trap_where": f"not dissolved by the {len(order)} largest entries"}
        k = min(2 * k, len(order))
    where = "; ".join(f"({int(i) // cols}, {int(i) % cols}) = {float(flat[i]):.4g}" for i in order[:min(k, TRAPS_LISTED)])
    return {"trap_entries": k, "trap_max_entry": float(flat[order[0]].abs()),
            "trap_where": where + (f"; ... {k - TRAPS_LISTED} more" if k > TRAPS_LISTED else "")}
