"""Compiled kernels of validation (numba): the steps whose answer for a tick depends on the ticks before it, which
whole-column code can only reach by repeated passes, sorts or hashing every key.

Three put a batch in shape: whether it is in arrival order already (ascending_pairs), dense ids of the symbols
(dense_ids) and the rows grouped per symbol in arrival order (group_order). The others take those grouped rows as numpy arrays and make one pass over them with a few scalars of
state per symbol: duplicates, published keys, price jumps, sequence gaps. They are compiled once per machine
(numba's on-disk cache next to this file) and run without the GIL. numpy and polars do everything else; these are
the only loops over ticks, and they are machine code, not Python.
"""

from __future__ import annotations

import numba
import numpy as np

NO_REF = -(2**63)  # "no reference price"; no price is -2^63 millionths

_jit = numba.njit(cache=True, nogil=True)


@_jit
def group_order(codes: np.ndarray, count: int) -> np.ndarray:
    """Positions that put equal codes (0..count-1) together in code order, input order kept among equals: a
    counting sort, ~10x cheaper than numpy's stable radix argsort."""
    starts = np.zeros(count + 1, dtype=np.int64)
    for code in codes:
        starts[code + 1] += 1
    for code in range(count):
        starts[code + 1] += starts[code]
    order = np.empty(len(codes), dtype=np.int64)
    for i in range(len(codes)):
        code = codes[i]
        order[starts[code]] = i
        starts[code] += 1
    return order


@_jit
def ascending_pairs(major: np.ndarray, minor: np.ndarray) -> bool:
    """The pairs (major, minor) strictly ascend (e.g. a batch already in (partition, offset) order)."""
    for i in range(1, len(major)):
        if major[i] < major[i - 1] or (major[i] == major[i - 1] and minor[i] <= minor[i - 1]):
            return False
    return True


@_jit
def _before(day_a: int, seq_a: int, day_b: int, seq_b: int) -> bool:
    return day_a < day_b or (day_a == day_b and seq_a < seq_b)


@_jit
def _find(days: np.ndarray, seqs: np.ndarray, lo: int, hi: int, day: int, seq: int) -> bool:
    """(day, seq) is among (days, seqs)[lo:hi], which ascend as pairs (a binary search)."""
    end = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if _before(days[mid], seqs[mid], day, seq):
            lo = mid + 1
        else:
            hi = mid
    return lo < end and days[lo] == day and seqs[lo] == seq


@_jit
def first_arrivals(group: np.ndarray, day: np.ndarray, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, undecided) of keys (group, day, sequence) grouped per symbol in arrival order: `first` is True at
    the first arrival of each key. A key above every earlier key of its symbol is a first arrival (the usual case:
    feeds send sequences ascending); one at or below is a repeat if an earlier record-setting key equals it (binary
    search: record-setting keys ascend). What that cannot decide (a late key equal to no record) is marked
    `undecided` and left True in `first`: the caller resolves those few among themselves."""
    n = len(group)
    first = np.ones(n, dtype=np.bool_)
    undecided = np.zeros(n, dtype=np.bool_)
    record_day = np.empty(n, dtype=day.dtype)
    record_seq = np.empty(n, dtype=seq.dtype)
    records = 0
    group_start = 0  # first record of the current group
    for i in range(n):
        if i == 0 or group[i] != group[i - 1]:
            group_start = records
        elif not _before(record_day[records - 1], record_seq[records - 1], day[i], seq[i]):
            if _find(record_day, record_seq, group_start, records, day[i], seq[i]):
                first[i] = False
            else:
                undecided[i] = True
            continue
        record_day[records] = day[i]
        record_seq[records] = seq[i]
        records += 1
    return first, undecided


@_jit
def keys_in(
    group: np.ndarray,
    day: np.ndarray,
    seq: np.ndarray,
    at: np.ndarray,
    known_group: np.ndarray,
    known_day: np.ndarray,
    known_seq: np.ndarray,
) -> np.ndarray:
    """For the rows at positions `at` (ascending) of keys (group, day, sequence) grouped per symbol: True where the
    key is one of the known keys, which must be sorted by (group, day, sequence). A merge of the two sorted runs
    while a symbol's keys ascend (one comparison per row, the usual case); a key below the last one merged is
    looked up by binary search."""
    out = np.zeros(len(at), dtype=np.bool_)
    if not len(known_group) or not len(at):
        return out
    top = max(group.max(), known_group.max()) + 1
    bounds = np.searchsorted(known_group, np.arange(top + 1))
    j = end = 0
    last = at[0]  # the row the merge last stood at
    for i in range(len(at)):
        row = at[i]
        g, d, s = group[row], day[row], seq[row]
        if i == 0 or g != group[last]:
            j, end = bounds[g], bounds[g + 1]
        elif _before(d, s, day[last], seq[last]):
            out[i] = _find(known_day, known_seq, bounds[g], end, d, s)
            continue
        last = row
        while j < end and _before(known_day[j], known_seq[j], d, s):
            j += 1
        out[i] = j < end and known_day[j] == d and known_seq[j] == s
    return out


@_jit
def flag_jumps(
    price: np.ndarray, starts: np.ndarray, seed: np.ndarray, threshold_bps: int
) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly, reference) of prices grouped per symbol in arrival order, `starts` marking each group's first row
    and `seed[k]` the reference of group k's first tick (NO_REF: none). A tick whose price differs from the last
    valid price of its symbol by more than threshold_bps basis points is an anomaly, and an anomaly is not valid:
    the tick after a spike is compared with the price before the spike. No check where the reference is missing
    or at or below zero (derivatives)."""
    n = len(price)
    anomaly = np.zeros(n, dtype=np.bool_)
    reference = np.empty(n, dtype=np.int64)
    group = -1
    ref = NO_REF
    for i in range(n):
        if starts[i]:
            group += 1
            ref = seed[group]
        reference[i] = ref
        if ref != NO_REF and ref > 0 and abs(price[i] - ref) * 10_000 > ref * threshold_bps:
            anomaly[i] = True
        else:
            ref = price[i]
    return anomaly, reference


@_jit
def sequence_steps(
    group: np.ndarray, epoch: np.ndarray, seq: np.ndarray, has_base: np.ndarray, base: np.ndarray, order: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk the rows in `order`, which sorts each (group, epoch) segment by sequence (stably: first arrivals first),
    once per distinct key. `base` is the highest sequence carried from before the batch where `has_base`.
    Returns (gap_at, gap_prev, below_at): the rows whose sequence jumps by more than one above the previous distinct
    sequence above the base (or above the base itself, for a segment's first), with that previous sequence; and the
    rows of distinct sequences below the base (late arrivals, candidates to fill a gap)."""
    n = len(order)
    gap_at = np.empty(n, dtype=np.int64)
    gap_prev = np.empty(n, dtype=np.int64)
    below_at = np.empty(n, dtype=np.int64)
    gaps = belows = 0
    last = above = -1  # the previous distinct key's row; the previous one above the base
    for k in range(n):
        p = order[k]
        if last >= 0 and group[p] == group[last] and epoch[p] == epoch[last] and seq[p] == seq[last]:
            continue  # a repeat of the key just walked
        last = p
        if has_base[p] and seq[p] <= base[p]:
            if seq[p] < base[p]:
                below_at[belows] = p
                belows += 1
            continue
        if above >= 0 and group[p] == group[above] and epoch[p] == epoch[above]:
            if seq[p] - seq[above] > 1:
                gap_at[gaps], gap_prev[gaps] = p, seq[above]
                gaps += 1
        elif has_base[p] and seq[p] - base[p] > 1:
            gap_at[gaps], gap_prev[gaps] = p, base[p]
            gaps += 1
        above = p
    return gap_at[:gaps], gap_prev[:gaps], below_at[:belows]


@_jit
def _slots(hashes: np.ndarray, mask: int) -> tuple[np.ndarray, np.ndarray]:
    """An open-addressing table of `mask + 1` slots holding the given distinct hashes: (hash, id) per slot."""
    slot_hash = np.zeros(mask + 1, dtype=np.int64)
    slot_id = np.full(mask + 1, -1, dtype=np.int64)
    for known in range(len(hashes)):
        slot = hashes[known] & mask
        while slot_id[slot] >= 0:
            slot = (slot + 1) & mask
        slot_hash[slot], slot_id[slot] = hashes[known], known
    return slot_hash, slot_id


@_jit
def dense_ids(hashes: np.ndarray, check: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Dense ids of values by their 64-bit hashes (int64), in order of first appearance: (id of each row, the first
    row of each id, exact). Rows not `present` get the id after the last. `check` is a second, independent hash of
    the same values: a row whose id's first row has another `check` shares a hash with a different value, and
    `exact` is False (the ids are then unusable). The table stays at most 1/8 full (a batch has a few thousand
    symbols at most), so almost every row costs one probe, in cache."""
    n = len(hashes)
    mask = 4095
    slot_hash, slot_id = _slots(hashes[:0], mask)
    distinct = np.empty(n, dtype=np.int64)  # hash of each id
    firsts = np.empty(n, dtype=np.int64)  # first row of each id
    ids = np.empty(n, dtype=np.int64)
    count = 0
    exact = True
    for i in range(n):
        if not present[i]:
            ids[i] = -1
            continue
        h = hashes[i]
        slot = h & mask
        while True:
            known = slot_id[slot]
            if known < 0:  # a new value
                if 8 * (count + 1) > mask + 1:
                    mask = 4 * mask + 3
                    slot_hash, slot_id = _slots(distinct[:count], mask)
                    slot = h & mask
                    while slot_id[slot] >= 0:
                        slot = (slot + 1) & mask
                slot_hash[slot], slot_id[slot] = h, count
                distinct[count], firsts[count] = h, i
                known = count
                count += 1
                break
            if slot_hash[slot] == h:
                exact &= check[i] == check[firsts[known]]
                break
            slot = (slot + 1) & mask
        ids[i] = known
    for i in range(n):
        if ids[i] < 0:
            ids[i] = count
    return ids, firsts[:count], exact
