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

HEAD = "kind\tworkload\ttarget\trep\tcount\tsize\tdepth\tseconds\tstatus\targs\n"


def row(wl, target, rep, count, size, depth, secs, status="ok", kind="qemu"):
    return f"{kind}\t{wl}\t{target}\t{rep}\t{count}\t{size}\t{depth}\t{secs}\t{status}\t-x\n"


class SummarizeTest(unittest.TestCase):
    def write_raw(self, rows):
        fd, path = tempfile.mkstemp(suffix=".tsv")
        with os.fdopen(fd, "w") as f:
            f.write(HEAD + "".join(rows))
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


if __name__ == "__main__":
    unittest.main()
