#!/usr/bin/env python3
"""summarize.py: turns bench/run.sh's raw runs into the table of medians.

Input is the raw TSV run.sh writes (one row per run: kind, workload, target,
rep, count, size, depth, seconds, status, args). For every workload and
target it takes the median IOPS over the successful runs (IOPS = count /
seconds), derives MB/s (10^6 bytes) and the mean latency, and on metro's
rows the ratios metro÷tgtd-sync and metro÷tgtd-buffered of the IOPS. Then
it checks the performance targets of issue 2. The table goes to stdout, the
same numbers as JSON to --json.

Mean latency: at depth 1 it is the real mean (seconds / count). At depth
d > 1 it is derived with Little's law, d / IOPS, which holds when the
initiator keeps d requests in flight all the time (qemu-img bench and
iscsi-perf do); it is marked with '*'.
"""

import argparse
import json
import statistics
import sys

TARGETS = ["tgtd-sync", "tgtd-buffered", "metro"]
REFS = ["tgtd-sync", "tgtd-buffered"]

WORKLOADS = [
    ("w4k-d32", "4K write d32 (step 8K)"),
    ("w4k-d1", "4K write d1 (step 8K)"),
    ("r4k-d32", "4K read d32 (step 8K)"),
    ("w64k-seq", "64K seq write d32"),
    ("perf-r4k-d32", "iscsi-perf 4K seq read d32"),
]

# The performance targets of issue 2's acceptance: (workload, reference,
# what is compared, bound). "iops" wants metro÷ref >= bound; "latency"
# wants metro's latency ÷ ref's <= bound.
GOALS = [
    ("w4k-d32", "tgtd-sync", "iops", 2.0),
    ("w4k-d32", "tgtd-buffered", "iops", 1.0),
    ("w4k-d1", "tgtd-sync", "latency", 1.0),
    ("r4k-d32", "tgtd-buffered", "iops", 1.0),
    ("w64k-seq", "tgtd-sync", "iops", 1.0),
]


def read_raw(path):
    """Returns the raw rows as dicts (header names as keys)."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if not lines:
        return []
    head = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cells = line.split("\t")
        cells += [""] * (len(head) - len(cells))
        rows.append(dict(zip(head, cells)))
    return rows


def cell_stats(rows):
    """Median statistics of one workload on one target, or None."""
    if not rows:
        return None
    iops = []
    for r in rows:
        if r["status"] != "ok":
            continue
        try:
            count, secs = float(r["count"]), float(r["seconds"])
        except ValueError:
            continue
        if secs > 0 and count > 0:
            iops.append(count / secs)
    size = int(rows[0]["size"] or 0)
    depth = int(rows[0]["depth"] or 1)
    out = {
        "runs": len(rows),
        "ok": len(iops),
        "failed": [r["status"] for r in rows if r["status"] != "ok"],
        "size": size,
        "depth": depth,
        "iops_runs": [round(x, 1) for x in iops],
    }
    if not iops:
        return out
    med = statistics.median(iops)
    out.update(
        {
            "iops": med,
            "mbps": med * size / 1e6,
            "latency_ms": depth / med * 1000.0,
            "latency_derived": depth > 1,
            "spread_pct": (max(iops) - min(iops)) / med * 100.0,
        }
    )
    return out


def summarize(rows):
    """Returns {workload: {target: stats}} for the timed runs."""
    out = {}
    for wl, _ in WORKLOADS:
        per = {}
        for t in TARGETS:
            sel = [r for r in rows if r["workload"] == wl and r["target"] == t]
            st = cell_stats(sel)
            if st is not None:
                per[t] = st
        if per:
            out[wl] = per
    return out


def ratio(summary, wl, ref):
    """metro's median IOPS ÷ ref's on workload wl, or None."""
    per = summary.get(wl, {})
    m, r = per.get("metro", {}), per.get(ref, {})
    if "iops" in m and "iops" in r and r["iops"] > 0:
        return m["iops"] / r["iops"]
    return None


def goals(summary):
    """Evaluates GOALS; returns a list of dicts."""
    out = []
    for wl, ref, what, bound in GOALS:
        x = ratio(summary, wl, ref)
        g = {"workload": wl, "reference": ref, "measure": what, "bound": bound}
        if x is None:
            g.update({"value": None, "met": None})
        elif what == "iops":
            g.update({"value": x, "met": x >= bound})
        else:
            # Latency ratio is the inverse of the IOPS ratio at equal depth.
            g.update({"value": 1.0 / x, "met": 1.0 / x <= bound})
        out.append(g)
    return out


def fmt_num(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def render(summary, meta_lines):
    """The table as text."""
    cols = [
        ("workload", "<", 27),
        ("target", "<", 13),
        ("runs", ">", 5),
        ("IOPS", ">", 9),
        ("MB/s", ">", 8),
        ("lat ms", ">", 8),
        ("spread", ">", 7),
        ("÷sync", ">", 7),
        ("÷buffered", ">", 9),
    ]

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, (_, a, w) in zip(cells, cols)).rstrip()

    out = list(meta_lines)
    if meta_lines:
        out.append("")
    out.append(line([c[0] for c in cols]))
    out.append(line(["-" * c[2] for c in cols]))
    labels = dict(WORKLOADS)
    for wl, _ in WORKLOADS:
        per = summary.get(wl)
        if not per:
            continue
        first = True
        for t in TARGETS:
            st = per.get(t)
            if st is None:
                continue
            runs = f"{st['ok']}/{st['runs']}"
            if "iops" in st:
                lat = f"{st['latency_ms']:.3f}" + ("*" if st["latency_derived"] else " ")
                cells = [
                    fmt_num(st["iops"]),
                    fmt_num(st["mbps"], 1),
                    lat,
                    f"{st['spread_pct']:.0f}%",
                ]
            else:
                cells = ["FAILED", "-", "-", "-"]
            rs = ["", ""]
            if t == "metro":
                rs = [
                    "-" if ratio(summary, wl, ref) is None else f"{ratio(summary, wl, ref):.2f}x"
                    for ref in REFS
                ]
            out.append(line([labels[wl] if first else "", t, runs] + cells + rs))
            first = False
    out.append("")
    out.append(
        "IOPS: median over runs (count / elapsed seconds); MB/s = IOPS x size / 10^6;"
    )
    out.append(
        "lat ms: mean latency, * = derived as depth / IOPS (Little's law), else measured"
    )
    out.append(
        "(depth 1: elapsed / count); spread = (max - min) / median IOPS over the runs;"
    )
    out.append("÷sync, ÷buffered: metro's median IOPS ÷ the reference's (higher is better).")
    out.append("")
    out.append("Targets (issue 2 acceptance):")
    for g in goals(summary):
        label = labels[g["workload"]]
        if g["measure"] == "iops":
            want = f"IOPS metro÷{g['reference']} >= {g['bound']:.1f}"
        else:
            want = f"latency metro÷{g['reference']} <= {g['bound']:.1f}"
        if g["value"] is None:
            verdict = "n/a (not measured)"
        else:
            verdict = f"{g['value']:.2f}  " + ("met" if g["met"] else "MISSED")
        out.append(f"  {label:<27} {want:<36} {verdict}")
    return "\n".join(out) + "\n"


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", required=True, help="raw TSV written by run.sh")
    ap.add_argument("--meta", help="text file with lines to print above the table")
    ap.add_argument("--json", help="write the summary as JSON here")
    args = ap.parse_args(argv)

    rows = [r for r in read_raw(args.raw) if r.get("workload") != "prefill"]
    summary = summarize(rows)
    meta = []
    if args.meta:
        with open(args.meta, encoding="utf-8") as f:
            meta = [line.rstrip("\n") for line in f]
    sys.stdout.write(render(summary, meta))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"meta": meta, "workloads": summary, "targets": goals(summary)},
                f,
                indent=2,
            )
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
