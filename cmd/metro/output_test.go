package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestRenderProgress(t *testing.T) {
	const G = 1 << 30
	cases := []struct {
		label       string
		done, total uint64
		rate        float64
		want        string
	}{
		{"resync pod1", 0, 10 * G, 0,
			"resync pod1  [>         ]   0%  0/10G  -/s  ETA --:--"},
		{"", 1 * G, 3 * G, 100 << 20,
			"[===>      ]  33%  1G/3G  100M/s  ETA 0:21"},
		{"b", 5 * G, 10 * G, 1 << 20,
			"b  [=====>    ]  50%  5G/10G  1M/s  ETA 1:25:20"},
		{"b", 10*G - 1, 10 * G, 1 << 30,
			"b  [=========>]  99%  10.00G/10G  1G/s  ETA 0:01"},
		{"b", 10 * G, 10 * G, 1 << 30,
			"b  [==========] 100%  10G/10G  1G/s  ETA 0:00"},
		{"b", 12 * G, 10 * G, 0, // more than the total: clamped
			"b  [==========] 100%  10G/10G  -/s  ETA 0:00"},
		{"empty", 0, 0, 0,
			"empty  [==========] 100%  0/0  -/s  ETA 0:00"},
	}
	for _, tc := range cases {
		if got := renderProgress(tc.label, tc.done, tc.total, tc.rate, 10); got != tc.want {
			t.Errorf("renderProgress(%q, %d, %d, %g):\n got %q\nwant %q", tc.label, tc.done, tc.total, tc.rate, got, tc.want)
		}
	}
}

func TestFmtETA(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                       "0:00",
		1500 * time.Millisecond: "0:02",
		59 * time.Second:        "0:59",
		61 * time.Second:        "1:01",
		time.Hour + 2*time.Minute + 3*time.Second: "1:02:03",
		-time.Second:     "--:--",
		2000 * time.Hour: "--:--",
	} {
		if got := fmtETA(d); got != want {
			t.Errorf("fmtETA(%v) = %q, want %q", d, got, want)
		}
	}
}

// fakeClock is a clock tests advance by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestProgressLines(t *testing.T) {
	clk := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var buf bytes.Buffer
	p := newProgress(&buf, "baseline", clk.now)
	if p.redraw {
		t.Fatal("a buffer is not a terminal")
	}
	const total = 100 << 20
	// Starts at 20M already done (a resumed resync): the rate counts only
	// what is done while watching.
	for done := uint64(20 << 20); done <= total; done += 5 << 20 {
		if err := p.update(done, total); err != nil {
			t.Fatal(err)
		}
		clk.t = clk.t.Add(time.Second)
	}
	if err := p.finish(); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	// One line per tenth reached: 20%, 30%, ... 100%.
	if len(lines) != 9 {
		t.Fatalf("got %d lines, want 9:\n%s", len(lines), buf.String())
	}
	if !strings.HasPrefix(lines[0], "baseline  [") || !strings.Contains(lines[0], " 20%  20M/100M  -/s  ETA --:--") {
		t.Errorf("first line: %q", lines[0])
	}
	if !strings.Contains(lines[1], " 30%  30M/100M  5M/s  ETA 0:14") {
		t.Errorf("second line: %q", lines[1])
	}
	if !strings.Contains(lines[8], "100%  100M/100M  5M/s  ETA 0:00") {
		t.Errorf("last line: %q", lines[8])
	}
}

func TestProgressRedraw(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	var buf bytes.Buffer
	p := newProgress(&buf, "x", clk.now)
	p.redraw = true // as on a terminal
	p.update(0, 1<<30)
	clk.t = clk.t.Add(time.Second)
	p.update(1<<29, 1<<30)
	p.finish()
	out := buf.String()
	if strings.Count(out, "\r") != 2 || !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
		t.Fatalf("redraw output %q: want two in-place lines and one final newline", out)
	}
	if !strings.Contains(out, " 50%  512M/1G  512M/s  ETA 0:01") {
		t.Fatalf("redraw output %q", out)
	}
}

func TestTable(t *testing.T) {
	tb := newTable("Name", "Size", "Used")
	tb.row("pod1::vol1", "10G", "")
	tb.row("p::a\tb", "1.50T") // a tab in a cell must not add a column; missing cells print "-"
	var buf bytes.Buffer
	if err := tb.write(&buf); err != nil {
		t.Fatal(err)
	}
	want := "Name        Size   Used\n" +
		"pod1::vol1  10G    -\n" +
		"p::a b      1.50T  -\n"
	if buf.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", buf.String(), want)
	}
}

func TestOutputJSONListIsArray(t *testing.T) {
	var buf bytes.Buffer
	o := output{w: &buf, json: true}
	if err := o.list([]string{}, newTable("Name")); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(buf.String()) != "[]" {
		t.Fatalf("empty list = %q", buf.String())
	}
	buf.Reset()
	if err := o.done("Deleted %s", "x"); err != nil || buf.Len() != 0 {
		t.Fatalf("done with --json printed %q", buf.String())
	}
}

func TestSplitList(t *testing.T) {
	for in, want := range map[string]string{"": "", "a": "a", "a,b": "a|b", " a , ,b,": "a|b"} {
		got := splitList(in)
		if got == nil || strings.Join(got, "|") != want {
			t.Errorf("splitList(%q) = %#v, want %q", in, got, want)
		}
	}
}

func TestParseResize(t *testing.T) {
	const G = 1 << 30
	cases := []struct {
		in   string
		cur  uint64
		want uint64
		err  string
	}{
		{"20G", 10 * G, 20 * G, ""},
		{"10G", 10 * G, 10 * G, ""},
		{"+10G", 10 * G, 20 * G, ""},
		{" +512M", G, G + 512<<20, ""},
		{"5G", 10 * G, 0, "only grow"},
		{"+0", G, 0, "grows by nothing"},
		{"+x", G, 0, "not a size"},
		{"+8P", 1 << 63, 0, ""}, // overflows only past 2^64
		{"", G, 0, "empty"},
	}
	for _, tc := range cases {
		got, err := parseResize(tc.in, tc.cur)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseResize(%q, %d) = %d, %v; want error with %q", tc.in, tc.cur, got, err, tc.err)
			}
			continue
		}
		if err != nil || (tc.want != 0 && got != tc.want) {
			t.Errorf("parseResize(%q, %d) = %d, %v; want %d", tc.in, tc.cur, got, err, tc.want)
		}
	}
	if _, err := parseResize("+8P", ^uint64(0)-10); err == nil || !strings.Contains(err.Error(), "too large") {
		t.Errorf("overflow: %v", err)
	}
}
