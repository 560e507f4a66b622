"""curate on Ray, dropping exactly the records the local engine drops and writing the same report.

The local engine runs each record through the filters in order, and its two deduplication filters
remember what reached them: a record is an exact duplicate when an earlier record that passed every other
filter has its image bytes, and a near duplicate when an earlier record that near deduplication kept is
within its Hamming radius. Here that becomes three steps:

1. **Judge** (one task per input shard): read the shard (the local reader's checks and counts), run the
   per-record filters (decontamination's benchmark hashes and QA pairs arrive once per worker, ray.put),
   and hash each surviving image: sha256 and the perceptual hash. Survivors stay in the object store; the
   driver gets a small summary per record, and the hashes go into a Ray Dataset.
2. **Exact duplicates**: a group-by on the sha256; the first of each group in global order keeps it.
3. **Near duplicates**: a group-by on the perceptual hashes' bands (HammingIndex: two hashes within the
   radius share a band); each group of two or more lists its pairs within the radius, and the driver
   resolves them keep-first in global order, naming the same first match as HammingIndex.find.

Global order is (input shard, position in it); the unique-key rule across shards, the report's counts
and its first examples per filter are applied by the driver in that order. The kept records are then
fetched shard by shard and written by the driver (convert.write_shards: the output rule, the manifest).
"""
from __future__ import annotations

from typing import Any, Iterator

from data_pipelines.dedup import ExactDuplicates, HammingIndex, NearDuplicates
from data_pipelines.filters import Filter, _phash_or_reason
from data_pipelines.ray_engine import cluster_cpus, fetch, group_by_settings, ordered
from data_pipelines.report import CurationReport, FilterResult
from molmini.data.reader import BadRecords, ShardReader, Skip
from molmini.data.records import Record

POSITION_BITS = 32  # global order = shard number << 32 | position in the shard


def _judge_shard(number: int, url: str, judges: list[Filter], hash_images: bool) -> tuple[dict[str, Any], Any, list]:
    """The task: (summary for the driver, hashes, the surviving records). The summary's `entries` are, in the
    shard's order, ``("skip", Skip)`` or ``("record", where, key, order, dropped_by, why, counts)``, with
    `dropped_by` the index of the judge that dropped it (-1: none) and `counts` the judges' own extra
    numbers for this record (EvalQAOverlap's trimmed exchanges); `unhashable`, order -> (key, why) of the
    images whose perceptual hash failed. `hashes`: a pyarrow table with a row per surviving record with an
    image: its order, key, sha256 and perceptual hash (empty when it failed)."""
    import hashlib

    import pyarrow as pa

    entries, survivors, unhashable = [], [], {}
    rows: dict[str, list] = {"order": [], "key": [], "sha256": [], "phash": []}
    for position, (where, entry) in enumerate(ShardReader([url]).located(url)):
        if isinstance(entry, Skip):
            entries.append(("skip", entry))
            continue
        order, record, dropped_by, why, counts = (number << POSITION_BITS) | position, entry, -1, None, {}
        for i, judge in enumerate(judges):
            record, why = judge.apply(record)
            if judge.counts:
                counts[i] = dict(judge.counts)
                judge.counts.clear()
            if record is None:
                dropped_by = i
                break
        entries.append(("record", where, entry.key, order, dropped_by, why, counts))
        if record is None:
            continue
        survivors.append((order, record))
        if hash_images and record.image is not None:
            value, error = _phash_or_reason(record)
            rows["order"].append(order)
            rows["key"].append(record.key)
            rows["sha256"].append(hashlib.sha256(record.image).hexdigest())
            rows["phash"].append("" if value is None else f"{value:x}")
            if error:
                unhashable[order] = (record.key, error)
    hashes = pa.table({"order": pa.array(rows["order"], pa.int64()), **{k: pa.array(v, pa.string())
                                                                        for k, v in rows.items() if k != "order"}})
    return {"entries": entries, "unhashable": unhashable}, hashes, survivors


EXACT_SCHEMA = {"order": "int64", "key": "string", "first_key": "string"}
NEAR_SCHEMA = {"order": "int64", "key": "string", "band": "int64", "match_order": "int64", "match_key": "string",
               "distance": "int64"}


def _empty_or(columns: dict[str, list], schema: dict[str, str]):
    import pyarrow as pa
    return pa.table({name: pa.array(columns.get(name, []), getattr(pa, kind)()) for name, kind in schema.items()})


def _exact_group(group):
    """A sha256 group's records after its first (in global order): each dropped for the first one's bytes."""
    order = group.column("order").to_pylist()
    keys = group.column("key").to_pylist()
    ranked = sorted(range(len(order)), key=order.__getitem__)
    first = keys[ranked[0]]
    return _empty_or({"order": [order[i] for i in ranked[1:]], "key": [keys[i] for i in ranked[1:]],
                      "first_key": [first] * (len(ranked) - 1)}, EXACT_SCHEMA)


def _band_rows(batch, radius: int):
    """One row per (record, band) of a batch of hashes: the band's id and value make the group-by key."""
    import pyarrow as pa

    index = HammingIndex(radius)
    out = {"band_key": [], "band": [], "order": [], "key": [], "phash": []}
    for order, key, phash in zip(batch.column("order").to_pylist(), batch.column("key").to_pylist(),
                                 batch.column("phash").to_pylist()):
        if not phash:  # an image that cannot be decoded: the driver drops it (`unhashable`)
            continue
        for band, value in enumerate(index.band_values(int(phash, 16))):
            out["band_key"].append(f"{band}:{value:x}")
            out["band"].append(band)
            out["order"].append(order)
            out["key"].append(key)
            out["phash"].append(phash)
    return pa.table({"band_key": pa.array(out["band_key"], pa.string()), "band": pa.array(out["band"], pa.int64()),
                     "order": pa.array(out["order"], pa.int64()), "key": pa.array(out["key"], pa.string()),
                     "phash": pa.array(out["phash"], pa.string())})


def _near_group(group, radius: int):
    """The pairs of a band group within `radius` bits: each later record with an earlier one it may copy.
    Quadratic in the group's size (a band value that many images share); most groups hold one record."""
    columns: dict[str, list] = {name: [] for name in NEAR_SCHEMA}
    order = group.column("order").to_pylist()
    if len(order) > 1:
        band = group.column("band")[0].as_py()
        keys = group.column("key").to_pylist()
        values = [int(h, 16) for h in group.column("phash").to_pylist()]
        ranked = sorted(range(len(order)), key=order.__getitem__)
        for n, i in enumerate(ranked):
            for j in ranked[:n]:
                distance = (values[i] ^ values[j]).bit_count()
                if distance <= radius:
                    for name, value in zip(NEAR_SCHEMA, (order[i], keys[i], band, order[j], keys[j], distance)):
                        columns[name].append(value)
    return _empty_or(columns, NEAR_SCHEMA)


def curate_on_ray(shards: list[str], filters: list[Filter], unreadable: BadRecords,
                  max_examples: int = 10) -> tuple[Iterator[Record], CurationReport]:
    """curate.curate's (kept records, report) for the records of `shards` (read as read_records reads
    them, the bad ones counted in `unreadable`); as there, the work starts when the records are first
    asked for, and the report is complete once they are all read. The filters run as in
    `standard_filters`: every per-record filter, then the deduplication filters, which must come last."""
    import ray

    dedup = [i for i, f in enumerate(filters) if isinstance(f, (ExactDuplicates, NearDuplicates))]
    if dedup and dedup != list(range(len(filters) - len(dedup), len(filters))):
        raise ValueError("the Ray engine runs the deduplication filters after every other filter, as "
                         "standard_filters orders them; put exact_duplicates and near_duplicates last")
    judges = filters[:len(filters) - len(dedup)]
    report = CurationReport([FilterResult(f.name, f.params(), f.counts) for f in filters])
    drops: list[list[tuple[int, str, str]]] = [[] for _ in filters]  # per filter: (order, key, why)

    def kept() -> Iterator[Record]:
        # Lazy, like the local engine: the caller's output rule refuses a taken --out before any work.
        judge = ray.remote(num_returns=3)(_judge_shard)
        judges_ref = ray.put(judges)  # the eval set's hashes and QA pairs, sent to each worker once
        # (hashes, survivors) ride along; each shard's summary is fetched in shard order
        jobs = ((refs[1:], refs[0]) for refs in (judge.remote(number, url, judges_ref, bool(dedup))
                                                 for number, url in enumerate(shards)))
        reader = ShardReader(shards)  # the unique-key rule across shards
        survivor_refs, hash_refs, excluded = [], [], set()
        unhashable: dict[int, tuple[str, str]] = {}  # order -> (key, why its perceptual hash failed)
        for (hashes_ref, survivors_ref), summary in ordered(jobs, window=2 * cluster_cpus()):
            _fold(summary, reader, report, drops, unreadable, excluded)
            unhashable.update(summary["unhashable"])
            survivor_refs.append(survivors_ref)
            hash_refs.append(hashes_ref)
        dropped: set[int] = set()  # orders of the records that deduplication drops
        with group_by_settings():
            _deduplicate(filters, dedup, hash_refs, excluded, unhashable, drops, dropped)
        report.kept = report.seen - sum(len(found) for found in drops)
        for result, found in zip(report.filters, drops):
            result.dropped = len(found)
            result.examples = [{"key": key, "why": why} for _, key, why in sorted(found)[:max_examples]]
        yield from _kept(survivor_refs, dropped | excluded)

    return kept(), report


def _deduplicate(filters: list[Filter], dedup: list[int], hash_refs: list, excluded: set[int],
                 unhashable: dict[int, tuple[str, str]], drops: list[list[tuple]], dropped: set[int]) -> None:
    """Each deduplication filter in turn, on the hash rows the ones before it left: its drops into `drops`
    (at the filter's index) and their orders into `dropped`."""
    import ray.data

    if not dedup:
        return
    hashes = ray.data.from_arrow_refs(hash_refs)
    if excluded:
        hashes = _without(hashes, excluded)
    for i in dedup:
        remaining = _without(hashes, dropped) if dropped else hashes
        if isinstance(filters[i], ExactDuplicates):
            groups = remaining.groupby("sha256", num_partitions=partitions())
            found = [(row["order"], row["key"], f"same image bytes as {row['first_key']}")
                     for row in groups.map_groups(_exact_group, batch_format="pyarrow").take_all()]
        else:  # an image whose hash failed is dropped, with why, as NearDuplicates drops it
            found = [(order, key, why) for order, (key, why) in unhashable.items()
                     if order not in dropped and order not in excluded]
            found += _near_duplicates(remaining, filters[i].threshold)
        drops[i] = sorted(found)
        dropped.update(order for order, _, _ in found)


def _without(hashes, orders: set[int]):
    """The hash rows whose order is not in `orders`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    gone = pa.array(sorted(orders), pa.int64())
    return hashes.map_batches(lambda batch: batch.filter(pc.invert(pc.is_in(batch.column("order"), gone))),
                              batch_format="pyarrow")


def partitions() -> int:
    """Partitions of a group-by: a few per CPU (Ray Data's default, 200, is for clusters of hundreds)."""
    return 2 * cluster_cpus()


def _near_duplicates(remaining, radius: int) -> list[tuple[int, str, str]]:
    """(order, key, why) of each near duplicate among `remaining` (hash rows), keep-first in global order:
    a record goes when an earlier record that stays is within `radius` bits; of several, the one
    HammingIndex.find would name (the first band, then the earliest record in it)."""
    bands = remaining.map_batches(_band_rows, batch_format="pyarrow", fn_kwargs={"radius": radius})
    pairs = bands.groupby("band_key", num_partitions=partitions()).map_groups(
        _near_group, batch_format="pyarrow", fn_kwargs={"radius": radius}).take_all()
    candidates: dict[int, list[tuple]] = {}
    for pair in pairs:
        candidates.setdefault(pair["order"], []).append(
            (pair["band"], pair["match_order"], pair["match_key"], pair["distance"], pair["key"]))
    dropped: dict[int, tuple[str, str]] = {}
    for order in sorted(candidates):  # earlier records are settled first: a match must itself stay
        for band, match, match_key, distance, key in sorted(candidates[order]):
            if match not in dropped:
                dropped[order] = (key, f"perceptual hash {distance} bits from {match_key}")
                break
    return [(order, key, why) for order, (key, why) in dropped.items()]


def _kept(survivor_refs: list, dropped: set[int]) -> Iterator[Record]:
    """The surviving records of each shard in order, less the dropped ones; each shard's block is let go
    of once read, so the object store empties as the shards are written."""
    while survivor_refs:
        for order, record in fetch(survivor_refs.pop(0)):
            if order not in dropped:
                yield record


def _fold(summary: dict[str, Any], reader: ShardReader, report: CurationReport, drops: list[list[tuple]],
          unreadable: BadRecords, excluded: set[int]) -> None:
    """Fold one shard's summary into the report and the counts of bad records, in global order."""
    for entry in summary["entries"]:
        if entry[0] == "skip":
            unreadable.add(entry[1])
            continue
        _, where, key, order, dropped_by, why, counts = entry
        skip = reader.first_read(key, where)
        if skip is not None:  # a key an earlier shard holds: the local reader never lets it reach curation
            unreadable.add(skip)
            excluded.add(order)
            continue
        report.seen += 1
        for i, extra in counts.items():
            report.filters[i].counts.update(extra)
        if dropped_by >= 0:
            drops[dropped_by].append((order, key, why))
