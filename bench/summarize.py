#!/usr/bin/env python3
"""summarize.py: turns bench/run.sh's raw runs into the table of medians.

Input is the raw TSV run.sh writes (one row per run: kind, workload, target,
rep, count, size, depth, seconds, status, cpu_s, link_cpu_s, link_rtt,
args; the columns are found by the header, and files without the CPU
columns still read). For every workload and target it takes the median IOPS
over the successful runs (IOPS = count / seconds), derives MB/s (10^6
bytes) and the mean latency, the median CPU time of the target's arrays per
request (µs), on metro's and the pair's rows the ratios to tgtd-sync and
tgtd-buffered, and on the pair's rows the ratio to the one-array metro and
the latency difference to it. Then it checks the performance targets of
issue 2 (one array) and of the stretched pair. The table goes to stdout,
the same numbers as JSON to --json.

Mean latency: at depth 1 it is the real mean (seconds / count). At depth
d > 1 it is derived with Little's law, d / IOPS, which holds when the
initiator keeps d requests in flight all the time (qemu-img bench and
iscsi-perf do); it is marked with '*'.
"""

import argparse
import json
import statistics
import sys

TARGETS = ["tgtd-sync", "tgtd-buffered", "metro", "pair-a", "pair-b", "pair-a-1ms", "pair-b-1ms"]
REFS = ["tgtd-sync", "tgtd-buffered"]
# The stretched pair's targets: through array-a (the sequencer) or array-b,
# with the link at 0 or 1 ms round trip. They are compared to the
# one-array metro as well as to tgtd.
PAIRS = ["pair-a", "pair-b", "pair-a-1ms", "pair-b-1ms"]
METROS = ["metro"] + PAIRS

WORKLOADS = [
    ("w4k-d32", "4K write d32 (step 8K)"),
    ("w4k-d1", "4K write d1 (step 8K)"),
    ("r4k-d32", "4K read d32 (step 8K)"),
    ("w64k-seq", "64K seq write d32"),
    ("perf-r4k-d32", "iscsi-perf 4K seq read d32"),
]

# The performance targets of issue 2's acceptance (one array): (workload,
# reference, what is compared, bound). "iops" wants metro÷ref >= bound;
# "latency" wants metro's latency ÷ ref's <= bound.
GOALS = [
    ("w4k-d32", "tgtd-sync", "iops", 2.0),
    ("w4k-d32", "tgtd-buffered", "iops", 1.0),
    ("w4k-d1", "tgtd-sync", "latency", 1.0),
    ("r4k-d32", "tgtd-buffered", "iops", 1.0),
    ("w64k-seq", "tgtd-sync", "iops", 1.0),
]

# The stretched pair's targets: (workload, target, reference, measure,
# bound). "latency_diff_ms" wants target's latency - ref's <= bound (ms).
# Writes at depth 32 and reads are judged with the link at 0, the depth-1
# write latency with 1 ms of round trip; through either array.
PAIR_GOALS = [
    ("w4k-d32", "pair-a", "tgtd-sync", "iops", 1.0),
    ("w4k-d32", "pair-b", "tgtd-sync", "iops", 1.0),
    ("w4k-d1", "pair-a-1ms", "metro", "latency_diff_ms", 1.2),
    ("w4k-d1", "pair-b-1ms", "metro", "latency_diff_ms", 1.2),
    ("r4k-d32", "pair-a", "metro", "iops", 0.95),
    ("r4k-d32", "pair-b", "metro", "iops", 0.95),
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
    iops, cpu, link_cpu, rtts = [], [], [], set()
    for r in rows:
        if r["status"] != "ok":
            continue
        try:
            count, secs = float(r["count"]), float(r["seconds"])
        except ValueError:
            continue
        if secs > 0 and count > 0:
            iops.append(count / secs)
            # CPU seconds of the run ÷ its requests, in µs.
            for key, out in (("cpu_s", cpu), ("link_cpu_s", link_cpu)):
                try:
                    out.append(float(r.get(key) or "") / count * 1e6)
                except ValueError:
                    pass
            if r.get("link_rtt"):
                rtts.add(r["link_rtt"])
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
    if rtts:
        out["link_rtt"] = sorted(rtts)
    if cpu:
        # The arrays' CPU (user + system) per request: for a pair target,
        # both arrays'.
        out["cpu_us_per_io"] = statistics.median(cpu)
        out["cpu_us_runs"] = [round(x, 1) for x in cpu]
    if link_cpu:
        # metro lab up's own CPU per request: the link proxy.
        out["link_cpu_us_per_io"] = statistics.median(link_cpu)
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


def ran(summary):
    """The targets with at least one row in the summary."""
    return {t for per in summary.values() for t in per}


def ratio(summary, wl, ref, target="metro"):
    """target's median IOPS ÷ ref's on workload wl, or None."""
    per = summary.get(wl, {})
    m, r = per.get(target, {}), per.get(ref, {})
    if "iops" in m and "iops" in r and r["iops"] > 0:
        return m["iops"] / r["iops"]
    return None


def latency_diff_ms(summary, wl, ref, target):
    """target's mean latency - ref's on workload wl, in ms, or None."""
    per = summary.get(wl, {})
    m, r = per.get(target, {}), per.get(ref, {})
    if "latency_ms" in m and "latency_ms" in r:
        return m["latency_ms"] - r["latency_ms"]
    return None


def cpu(summary, wl, target):
    """target's median CPU µs per request on workload wl, or None."""
    return summary.get(wl, {}).get(target, {}).get("cpu_us_per_io")


def goals(summary):
    """Evaluates GOALS (for metro) and PAIR_GOALS; returns a list of
    dicts, leaving out the goals whose target or reference did not run at
    all (BENCH_TARGETS picked a subset)."""
    there = ran(summary)
    out = []
    todo = [(wl, "metro", ref, what, bound) for wl, ref, what, bound in GOALS]
    todo += PAIR_GOALS
    for wl, target, ref, what, bound in todo:
        if target not in there or ref not in there:
            continue
        g = {
            "workload": wl,
            "target": target,
            "reference": ref,
            "measure": what,
            "bound": bound,
            "group": "one-array" if target == "metro" else "pair",
        }
        if what == "latency_diff_ms":
            x = latency_diff_ms(summary, wl, ref, target)
            g.update({"value": x, "met": None if x is None else x <= bound})
        else:
            x = ratio(summary, wl, ref, target)
            if x is None:
                g.update({"value": None, "met": None})
            elif what == "iops":
                g.update({"value": x, "met": x >= bound})
            else:
                # Latency ratio is the inverse of the IOPS ratio at equal depth.
                g.update({"value": 1.0 / x, "met": 1.0 / x <= bound})
        # What the issue asks to read beside the verdict.
        if target in PAIRS:
            if wl == "w4k-d32":
                g["ratio_metro"] = ratio(summary, wl, "metro", target)
                g["cpu_us_per_write"] = cpu(summary, wl, target)
                g["metro_cpu_us_per_write"] = cpu(summary, wl, "metro")
            if what == "latency_diff_ms":
                per = summary.get(wl, {})
                g["latency_ms"] = per.get(target, {}).get("latency_ms")
                g["ref_latency_ms"] = per.get(ref, {}).get("latency_ms")
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
        ("CPU µs/IO", ">", 9),
        ("÷sync", ">", 7),
        ("÷buffered", ">", 9),
        ("÷metro", ">", 7),
        ("Δlat ms", ">", 8),
    ]

    def line(cells):
        return "  ".join(f"{c:{a}{w}}" for c, (_, a, w) in zip(cells, cols)).rstrip()

    def fmt_ratio(x):
        return "-" if x is None else f"{x:.2f}x"

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
            c = st.get("cpu_us_per_io")
            cells.append("" if c is None else f"{c:.0f}")
            rs = ["", "", "", ""]
            if t in METROS:
                rs[:2] = [fmt_ratio(ratio(summary, wl, ref, t)) for ref in REFS]
            if t in PAIRS:
                rs[2] = fmt_ratio(ratio(summary, wl, "metro", t))
                if st.get("depth") == 1:
                    d = latency_diff_ms(summary, wl, "metro", t)
                    rs[3] = "-" if d is None else f"{d:+.3f}"
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
    there = ran(summary)
    if any("cpu_us_per_io" in st for per in summary.values() for st in per.values()):
        out.append(
            "CPU µs/IO: median over runs of the CPU seconds (user+system) of the target's"
        )
        out.append(
            "arrays during the run ÷ its requests (metro: its array; pair-*: both arrays);"
        )
    if there & set(METROS):
        out.append(
            "÷sync, ÷buffered, ÷metro: the row's median IOPS ÷ tgtd-sync's, tgtd-buffered's,"
        )
        out.append(
            "the one-array metro's (higher is better); Δlat ms: the row's depth-1 latency"
        )
        out.append("minus the one-array metro's.")
    if there & set(PAIRS):
        out.append("pair-a, pair-b: the stretched pair through array-a (the sequencer) or")
        out.append("array-b (the follower), link round trip 0; pair-a-1ms, pair-b-1ms: 1 ms.")

    sections = [
        ("one-array", "Targets, one array (issue 2 acceptance):"),
        ("pair", "Targets, stretched pair:"),
    ]
    all_goals = goals(summary)
    for group, title in sections:
        gs = [g for g in all_goals if g["group"] == group]
        if not gs:
            continue
        out.append("")
        out.append(title)
        for g in gs:
            label = labels[g["workload"]]
            who, ref, bound = g["target"], g["reference"], g["bound"]
            if g["measure"] == "iops":
                want = f"IOPS ÷{ref} >= {bound:.2f}"
            elif g["measure"] == "latency":
                want = f"latency ÷{ref} <= {bound:.2f}"
            else:
                want = f"latency - {ref} <= +{bound:.1f} ms"
            if g["value"] is None:
                verdict = "n/a (not measured)"
            else:
                v = g["value"]
                v = f"{v:+.3f} ms" if g["measure"] == "latency_diff_ms" else f"{v:.2f}x"
                verdict = f"{v:>10}  " + ("met   " if g["met"] else "MISSED")
            extra = []
            if g.get("ratio_metro") is not None:
                extra.append(f"÷metro {fmt_ratio(g['ratio_metro'])}")
            if "cpu_us_per_write" in g:
                c, mc = g.get("cpu_us_per_write"), g.get("metro_cpu_us_per_write")
                if c is not None:
                    extra.append(
                        f"CPU {c:.0f} µs/write" + ("" if mc is None else f" (metro {mc:.0f})")
                    )
            if g.get("latency_ms") is not None and g.get("ref_latency_ms") is not None:
                extra.append(f"{g['latency_ms']:.3f} vs {g['ref_latency_ms']:.3f} ms")
            text = f"  {label:<27} {who:<11} {want:<33} {verdict}"
            if extra and g["value"] is not None:
                text += "  " + "; ".join(extra)
            out.append(text.rstrip())
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
