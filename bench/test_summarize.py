#!/usr/bin/env python3
"""Tests of summarize.py: python3 bench/test_summarize.py"""

import io
import json
import os
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import summarize  # noqa: E402

HEAD = (
    "kind\tworkload\ttarget\trep\tcount\tsize\tdepth\tseconds\tstatus"
    "\tcpu_s\tlink_cpu_s\tlink_rtt\targs\n"
)
# raw.tsv before the CPU columns existed.
OLD_HEAD = "kind\tworkload\ttarget\trep\tcount\tsize\tdepth\tseconds\tstatus\targs\n"


def row(wl, target, rep, count, size, depth, secs, status="ok", kind="qemu", cpu="", link_cpu="", rtt=""):
    return (
        f"{kind}\t{wl}\t{target}\t{rep}\t{count}\t{size}\t{depth}\t{secs}\t{status}"
        f"\t{cpu}\t{link_cpu}\t{rtt}\t-x\n"
    )


class SummarizeTest(unittest.TestCase):
    def write_raw(self, rows, head=HEAD):
        fd, path = tempfile.mkstemp(suffix=".tsv")
        with os.fdopen(fd, "w") as f:
            f.write(head + "".join(rows))
        self.addCleanup(os.remove, path)
        return path

    def test_median_ratio_latency(self):
        rows = []
        # tgtd-sync: 10k, 12k, 14k IOPS -> median 12k.
        for rep, secs in enumerate(["2.0", "1.6666667", "1.4285714"], 1):
            rows.append(row("w4k-d32", "tgtd-sync", rep, 20000, 4096, 32, secs))
        # tgtd-buffered: 40k; metro: 30k (one failed run ignored).
        for rep in (1, 2, 3):
            rows.append(row("w4k-d32", "tgtd-buffered", rep, 20000, 4096, 32, "0.5"))
            rows.append(row("w4k-d32", "metro", rep, 20000, 4096, 32, "0.6666667"))
        rows.append(row("w4k-d32", "metro", 4, 20000, 4096, 32, "", "timeout"))
        # Depth 1: 2000 writes in 0.68 s is 0.34 ms each; metro 0.30 ms.
        rows.append(row("w4k-d1", "tgtd-sync", 1, 2000, 4096, 1, "0.68"))
        rows.append(row("w4k-d1", "metro", 1, 2000, 4096, 1, "0.60"))
        # The prefill is not a workload.
        rows.append(row("prefill", "metro", 0, 4000, 65536, 32, "1.0"))
        s = summarize.summarize(summarize.read_raw(self.write_raw(rows)))

        sync = s["w4k-d32"]["tgtd-sync"]
        self.assertAlmostEqual(sync["iops"], 12000, delta=1)
        self.assertAlmostEqual(sync["mbps"], 12000 * 4096 / 1e6, delta=0.01)
        self.assertAlmostEqual(sync["latency_ms"], 32 / 12000 * 1000, delta=0.001)
        self.assertTrue(sync["latency_derived"])
        self.assertAlmostEqual(sync["spread_pct"], 4000 / 12000 * 100, delta=0.01)

        m = s["w4k-d32"]["metro"]
        self.assertEqual((m["ok"], m["runs"], m["failed"]), (3, 4, ["timeout"]))
        self.assertAlmostEqual(summarize.ratio(s, "w4k-d32", "tgtd-sync"), 2.5, delta=0.001)
        self.assertAlmostEqual(summarize.ratio(s, "w4k-d32", "tgtd-buffered"), 0.75, delta=0.001)

        d1 = s["w4k-d1"]["tgtd-sync"]
        self.assertAlmostEqual(d1["latency_ms"], 0.34, delta=1e-9)
        self.assertFalse(d1["latency_derived"])
        self.assertNotIn("prefill", s)

        g = {(x["workload"], x["reference"]): x for x in summarize.goals(s)}
        self.assertTrue(g[("w4k-d32", "tgtd-sync")]["met"])
        self.assertFalse(g[("w4k-d32", "tgtd-buffered")]["met"])
        self.assertAlmostEqual(g[("w4k-d1", "tgtd-sync")]["value"], 0.60 / 0.68, delta=1e-6)
        self.assertTrue(g[("w4k-d1", "tgtd-sync")]["met"])
        self.assertIsNone(g[("r4k-d32", "tgtd-buffered")]["met"])

    def test_all_failed_and_render(self):
        rows = [
            row("r4k-d32", "tgtd-buffered", 1, 20000, 4096, 32, "0.4"),
            row("r4k-d32", "metro", 1, 20000, 4096, 32, "", "exit1"),
            row("perf-r4k-d32", "metro", 1, "", 4096, 32, "5", "noparse", kind="perf"),
        ]
        s = summarize.summarize(summarize.read_raw(self.write_raw(rows)))
        self.assertNotIn("iops", s["r4k-d32"]["metro"])
        self.assertIsNone(summarize.ratio(s, "r4k-d32", "tgtd-buffered"))
        text = summarize.render(s, ["meta line"])
        self.assertIn("meta line", text)
        self.assertIn("FAILED", text)
        self.assertIn("50,000", text)

    def test_main_writes_json(self):
        raw = self.write_raw([row("w64k-seq", "tgtd-sync", 1, 4000, 65536, 32, "1.0")])
        fd, out = tempfile.mkstemp(suffix=".json")
        os.close(fd)
        self.addCleanup(os.remove, out)
        buf = io.StringIO()
        with redirect_stdout(buf):
            self.assertEqual(summarize.main(["--raw", raw, "--json", out]), 0)
        with open(out) as f:
            d = json.load(f)
        self.assertAlmostEqual(d["workloads"]["w64k-seq"]["tgtd-sync"]["mbps"], 4000 * 65536 / 1e6)
        self.assertIn("64K seq write", buf.getvalue())

    def test_old_raw_without_cpu_columns(self):
        old = "qemu\tw4k-d32\tmetro\t1\t20000\t4096\t32\t0.5\tok\t-x\n"
        s = summarize.summarize(summarize.read_raw(self.write_raw([old], OLD_HEAD)))
        m = s["w4k-d32"]["metro"]
        self.assertAlmostEqual(m["iops"], 40000)
        self.assertNotIn("cpu_us_per_io", m)

    def test_pair(self):
        rows = [
            # tgtd-sync 10k; metro 20k at 50 µs of CPU per write.
            row("w4k-d32", "tgtd-sync", 1, 20000, 4096, 32, "2.0"),
            row("w4k-d32", "metro", 1, 20000, 4096, 32, "1.0", cpu="1.00"),
            # pair-a 12k, 110 µs CPU/write (median of 100, 110, 120); pair-b 8k.
            row("w4k-d32", "pair-a", 1, 20000, 4096, 32, "1.6666667", cpu="2.00", link_cpu="0.2", rtt="0s"),
            row("w4k-d32", "pair-a", 2, 20000, 4096, 32, "1.6666667", cpu="2.20", rtt="0s"),
            row("w4k-d32", "pair-a", 3, 20000, 4096, 32, "1.6666667", cpu="2.40", rtt="0s"),
            row("w4k-d32", "pair-b", 1, 20000, 4096, 32, "2.5", cpu="3.0", rtt="0s"),
            # Depth 1: metro 0.30 ms; pair-a-1ms 1.40 ms (+1.10), pair-b-1ms 1.60 ms (+1.30).
            row("w4k-d1", "metro", 1, 2000, 4096, 1, "0.60"),
            row("w4k-d1", "pair-a", 1, 2000, 4096, 1, "0.80", rtt="0s"),
            row("w4k-d1", "pair-a-1ms", 1, 2000, 4096, 1, "2.80", rtt="1ms"),
            row("w4k-d1", "pair-b-1ms", 1, 2000, 4096, 1, "3.20", rtt="1ms"),
            # Reads: metro 40k, pair-a 39k (0.975), pair-b 36k (0.90).
            row("r4k-d32", "metro", 1, 20000, 4096, 32, "0.5"),
            row("r4k-d32", "pair-a", 1, 39000, 4096, 32, "1.0"),
            row("r4k-d32", "pair-b", 1, 36000, 4096, 32, "1.0"),
        ]
        s = summarize.summarize(summarize.read_raw(self.write_raw(rows)))
        pa = s["w4k-d32"]["pair-a"]
        self.assertAlmostEqual(pa["cpu_us_per_io"], 110, delta=1e-6)
        self.assertAlmostEqual(pa["link_cpu_us_per_io"], 10, delta=1e-6)
        self.assertEqual(pa["link_rtt"], ["0s"])
        self.assertAlmostEqual(s["w4k-d32"]["metro"]["cpu_us_per_io"], 50, delta=1e-6)
        self.assertAlmostEqual(summarize.ratio(s, "w4k-d32", "tgtd-sync", "pair-a"), 1.2, delta=1e-6)
        self.assertAlmostEqual(summarize.ratio(s, "w4k-d32", "metro", "pair-a"), 0.6, delta=1e-6)
        self.assertAlmostEqual(summarize.latency_diff_ms(s, "w4k-d1", "metro", "pair-a-1ms"), 1.1, delta=1e-9)

        g = {(x["workload"], x["target"], x["reference"]): x for x in summarize.goals(s)}
        self.assertTrue(g[("w4k-d32", "pair-a", "tgtd-sync")]["met"])
        self.assertAlmostEqual(g[("w4k-d32", "pair-a", "tgtd-sync")]["ratio_metro"], 0.6, delta=1e-6)
        self.assertAlmostEqual(g[("w4k-d32", "pair-a", "tgtd-sync")]["cpu_us_per_write"], 110, delta=1e-6)
        self.assertFalse(g[("w4k-d32", "pair-b", "tgtd-sync")]["met"])
        self.assertTrue(g[("w4k-d1", "pair-a-1ms", "metro")]["met"])
        self.assertFalse(g[("w4k-d1", "pair-b-1ms", "metro")]["met"])
        self.assertAlmostEqual(g[("w4k-d1", "pair-b-1ms", "metro")]["value"], 1.3, delta=1e-9)
        self.assertTrue(g[("r4k-d32", "pair-a", "metro")]["met"])
        self.assertFalse(g[("r4k-d32", "pair-b", "metro")]["met"])
        # metro's own goals are still there; goals of targets not run are not.
        self.assertIn(("w4k-d32", "metro", "tgtd-sync"), g)
        self.assertTrue(all(x["target"] in summarize.ran(s) for x in g.values()))

        text = summarize.render(s, [])
        self.assertIn("Targets, stretched pair:", text)
        self.assertIn("Targets, one array", text)
        self.assertIn("+1.100", text)  # Δlat column of pair-a-1ms
        self.assertIn("0.60x", text)  # pair-a ÷metro
        self.assertIn("CPU 110 µs/write (metro 50)", text)
        self.assertIn("+1.300 ms  MISSED", text)

    def test_only_some_targets(self):
        # BENCH_TARGETS="metro pair-a-1ms": no tgtd, no pair-a.
        rows = [
            row("w4k-d1", "metro", 1, 2000, 4096, 1, "0.60", cpu="0.1"),
            row("w4k-d1", "pair-a-1ms", 1, 2000, 4096, 1, "2.80", cpu="0.3", rtt="1ms"),
        ]
        s = summarize.summarize(summarize.read_raw(self.write_raw(rows)))
        gs = summarize.goals(s)
        # Without tgtd, metro's own goals are left out.
        self.assertEqual([(x["workload"], x["target"]) for x in gs], [("w4k-d1", "pair-a-1ms")])
        self.assertAlmostEqual(gs[0]["value"], 1.1, delta=1e-9)
        text = summarize.render(s, [])
        table = text.split("\n\n")[0]
        self.assertIn("pair-a-1ms", table)
        self.assertNotIn("pair-b", table)
        self.assertNotIn("Targets, one array", text)


if __name__ == "__main__":
    unittest.main()
