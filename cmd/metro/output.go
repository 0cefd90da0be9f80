package main

// This file holds what every administrator verb shares: tables for people,
// JSON for scripts, a progress bar for long work, and the checks of
// positional arguments and list-valued flags.

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/metro-storage/metro/internal/units"
)

// output is where a verb prints its answer, and in which form.
type output struct {
	w    io.Writer
	json bool
}

// newOutput returns the output of a running command: its standard output
// (so tests can capture it) in the form the --json flag asks for.
func (g *globals) newOutput(cmd *cobra.Command) output {
	return output{w: cmd.OutOrStdout(), json: g.json}
}

// list prints the answer of a list verb: the table t, or with --json the
// API objects items, which must be a slice and are always printed as a
// JSON array (never null).
func (o output) list(items any, t *table) error {
	if o.json {
		return writeJSON(o.w, items)
	}
	return t.write(o.w)
}

// one prints the object a create or change verb left behind: a one-row
// table, or with --json the API object itself.
func (o output) one(item any, t *table) error {
	if o.json {
		return writeJSON(o.w, item)
	}
	return t.write(o.w)
}

// done prints the confirmation line of a delete (nothing with --json:
// the exit status says it worked).
func (o output) done(format string, args ...any) error {
	if o.json {
		return nil
	}
	_, err := fmt.Fprintf(o.w, format+"\n", args...)
	return err
}

// writeJSON prints v as indented JSON followed by a newline.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("print JSON: %w", err)
	}
	return nil
}

// table is a human-readable table: a header row in title case (as
// storage administrators know it: "Name  Size  Used  Created") and
// aligned columns.
type table struct {
	header []string
	rows   [][]string
}

// newTable starts a table with the given column names.
func newTable(header ...string) *table {
	return &table{header: header}
}

// row adds a row; missing cells print as "-".
func (t *table) row(cells ...string) {
	r := make([]string, len(t.header))
	for i := range r {
		r[i] = "-"
		if i < len(cells) && cells[i] != "" {
			r[i] = cleanCell(cells[i])
		}
	}
	t.rows = append(t.rows, r)
}

// cleanCell keeps one cell on one line and in one column.
func cleanCell(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// write prints the table with columns two spaces apart.
func (t *table) write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(cells []string) {
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	line(t.header)
	for _, r := range t.rows {
		line(r)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("print table: %w", err)
	}
	return nil
}

// fmtSize prints a byte count in binary units (10G, 1.50T).
func fmtSize(n uint64) string { return units.FormatSize(n) }

// fmtTime prints a time in the local zone, or "-" for none.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05 MST")
}

// fmtTimePtr is fmtTime for optional times.
func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return fmtTime(*t)
}

// joinList prints a list as "a, b", or "-" when empty.
func joinList(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	return strings.Join(items, ", ")
}

// splitList parses a comma-separated flag value ("a,b", " a , b "); the
// empty string is the empty list, which clears the attribute.
func splitList(s string) []string {
	out := []string{}
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// argsN checks that a verb got exactly n positional arguments, described
// by what ("a pod name"), and says what to do when it did not.
func argsN(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case n == 0 && len(args) > 0:
			return fmt.Errorf("%s takes no arguments (got %q)%s", verb(cmd), args, usageHint(cmd))
		case len(args) < n:
			return fmt.Errorf("%s: missing %s%s", verb(cmd), what, usageHint(cmd))
		case len(args) > n:
			return fmt.Errorf("%s: too many arguments %q: give only %s%s", verb(cmd), args, what, usageHint(cmd))
		}
		return nil
	}
}

// verb names a command for error messages, without the program name
// (main prefixes "metro: "): "vol create".
func verb(cmd *cobra.Command) string {
	p := cmd.CommandPath()
	if r := cmd.Root(); r != cmd {
		p = strings.TrimPrefix(p, r.Name()+" ")
	}
	return p
}

// usageHint returns "; e.g. EXAMPLE" for a command with an example, or a
// pointer to its help.
func usageHint(cmd *cobra.Command) string {
	if ex := strings.TrimSpace(cmd.Example); ex != "" {
		first, _, _ := strings.Cut(ex, "\n")
		return "; e.g. " + strings.TrimSpace(first)
	}
	return fmt.Sprintf("; run '%s --help' for usage", cmd.CommandPath())
}

// noun makes a command that only groups verbs: without a verb it prints
// its help; with an unknown one it fails (cobra would print help and
// succeed).
func noun(cmd *cobra.Command) *cobra.Command {
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if len(args) > 0 {
			return fmt.Errorf("unknown command %q for %q; run '%s --help' for the list", args[0], c.CommandPath(), c.CommandPath())
		}
		return c.Help()
	}
	return cmd
}

// requireFlag fails with a hint when a required flag was not given.
func requireFlag(cmd *cobra.Command, name, hint string) error {
	if !cmd.Flags().Changed(name) {
		return fmt.Errorf("%s: --%s is required (%s)%s", verb(cmd), name, hint, usageHint(cmd))
	}
	return nil
}

// progress draws a progress bar for long work (baseline, resync) from the
// updates it is given: percent, bytes, rate and time left. On a terminal
// it redraws one line in place; elsewhere (a pipe, a log file) it prints a
// line each time another tenth of the work is done. It starts no
// goroutine: the caller's poll loop calls update.
type progress struct {
	w      io.Writer
	label  string
	width  int
	now    func() time.Time
	redraw bool

	started   bool
	start     time.Time // time of the first update
	startDone uint64    // bytes done at the first update
	lastTenth int       // last tenth printed when not redrawing
	lastLen   int       // length of the last line drawn in place
}

// progressWidth is the number of cells of the bar itself.
const progressWidth = 30

// newProgress returns a progress bar writing to w, labelled label; now
// is the clock (time.Now outside tests).
func newProgress(w io.Writer, label string, now func() time.Time) *progress {
	return &progress{w: w, label: label, width: progressWidth, now: now, redraw: isTerminal(w), lastTenth: -1}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// update reports that done of total bytes are done.
func (p *progress) update(done, total uint64) error {
	now := p.now()
	if !p.started {
		p.started, p.start, p.startDone = true, now, done
	}
	rate := 0.0
	if el := now.Sub(p.start).Seconds(); el > 0 && done > p.startDone {
		rate = float64(done-p.startDone) / el
	}
	line := renderProgress(p.label, done, total, rate, p.width)
	if p.redraw {
		pad := ""
		if n := p.lastLen - len(line); n > 0 {
			pad = strings.Repeat(" ", n)
		}
		p.lastLen = len(line)
		_, err := fmt.Fprintf(p.w, "\r%s%s", line, pad)
		return err
	}
	tenth := percent(done, total) / 10
	if tenth == p.lastTenth {
		return nil
	}
	p.lastTenth = tenth
	_, err := fmt.Fprintln(p.w, line)
	return err
}

// finish ends the line drawn in place.
func (p *progress) finish() error {
	if p.redraw && p.lastLen > 0 {
		p.lastLen = 0
		_, err := fmt.Fprintln(p.w)
		return err
	}
	return nil
}

// percent is the whole percentage of done in total; 100 only when all is
// done (no work counts as done).
func percent(done, total uint64) int {
	if total == 0 || done >= total {
		return 100
	}
	pct := int(math.Floor(float64(done) / float64(total) * 100))
	return min(pct, 99)
}

// renderProgress renders one progress line:
//
//	resync pod1  [=========>                    ]  33%  1G/3G  100M/s  ETA 0:20
//
// rate is in bytes per second (0: not known yet).
func renderProgress(label string, done, total uint64, rate float64, width int) string {
	done = min(done, total)
	pct := percent(done, total)
	fill := width
	if total > 0 && done < total {
		fill = min(int(float64(done)/float64(total)*float64(width)), width-1)
	}
	var bar strings.Builder
	bar.WriteString(strings.Repeat("=", fill))
	if fill < width {
		bar.WriteByte('>')
		bar.WriteString(strings.Repeat(" ", width-fill-1))
	}
	rateText, eta := "-/s", "--:--"
	if rate > 0 {
		rateText = fmtSize(uint64(rate)) + "/s"
		secs := math.Ceil(float64(total-done) / rate)
		eta = fmtETA(time.Duration(min(secs, 1e7)) * time.Second)
	}
	if done == total {
		eta = "0:00"
	}
	s := fmt.Sprintf("[%s] %3d%%  %s/%s  %s  ETA %s", bar.String(), pct, fmtSize(done), fmtSize(total), rateText, eta)
	if label != "" {
		s = label + "  " + s
	}
	return s
}

// fmtETA prints a duration as M:SS or H:MM:SS, rounded up to the second.
func fmtETA(d time.Duration) string {
	if d < 0 || d > 1000*time.Hour {
		return "--:--"
	}
	secs := int64((d + time.Second - 1) / time.Second)
	h, m, s := secs/3600, secs/60%60, secs%60
	if h > 0 {
		return fmt.Sprintf("%d:%02d:%02d", h, m, s)
	}
	return fmt.Sprintf("%d:%02d", m, s)
}

// fmtLUN prints a LUN.
func fmtLUN(n uint64) string { return strconv.FormatUint(n, 10) }
