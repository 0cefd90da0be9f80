package array

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// The sequential model TestPairLinearizable checks its history against:
// a small region of linUnits units of 4 KiB, each holding the last value
// written to it (0: never written), and the persistent-reservation keys
// registered by each client's I_T nexus.

const (
	linUnits   = 8
	linClients = 6
	// linMaxSpan is the most units one write or read covers.
	linMaxSpan = 3
)

type linKind uint8

const (
	linWrite linKind = iota
	linRead
	linCAW
	linRegister
	linReadKeys
	linPreempt
)

// onKeys reports whether operations of the kind read or change the
// registrations rather than the units.
func (k linKind) onKeys() bool { return k == linRegister || k == linReadKeys || k == linPreempt }

func (k linKind) String() string {
	return [...]string{"write", "read", "caw", "register", "read-keys", "preempt"}[k]
}

// linInput is an operation as a client issued it.
type linInput struct {
	Kind   linKind
	Client int
	// Array names the array the client talks to.
	Array string
	// Unit and N are the units covered (write, read; CAW: N is 1).
	Unit, N int
	// Values: for a write the new value of each unit from Unit; for a
	// COMPARE AND WRITE [0] is the value expected and [1] the new one;
	// for a registration [0] is the key (0: unregister); for a PREEMPT
	// AND ABORT [0] is the client's own key and [1] the key preempted.
	Values [linUnits]uint64
	// Retry marks a PREEMPT AND ABORT identical to the client's previous
	// command, whose outcome it did not learn: the array may answer it
	// with that command's outcome (a retry of a lost answer) when the
	// state shows it took effect.
	Retry bool
}

// linOutput is what the client saw.
type linOutput struct {
	// Unknown: the command failed (NOT READY, transitioning, any error);
	// a change may or may not have happened. Its return is the end of
	// the history.
	Unknown bool
	// Miscompare: COMPARE AND WRITE answered MISCOMPARE.
	Miscompare bool
	// Conflict: PREEMPT AND ABORT answered RESERVATION CONFLICT.
	Conflict bool
	// Values are the units read.
	Values [linUnits]uint64
	// Keys are the keys READ KEYS listed, sorted.
	Keys []uint64
	// Sense describes a failure, for the visualization.
	Sense string
}

// linState is the model's state. It is comparable.
type linState struct {
	Units [linUnits]uint64
	Keys  [linClients]uint64
}

func (s linState) sortedKeys() []uint64 {
	var keys []uint64
	for _, k := range s.Keys {
		if k != 0 {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// linStep returns the states the model may be in after in with out
// (none: out is impossible in s). An operation of unknown outcome may
// have taken effect or not.
func linStep(s linState, in linInput, out linOutput) []linState {
	maybe := func(next linState) []linState {
		if out.Unknown && next != s {
			return []linState{s, next}
		}
		return []linState{next}
	}
	switch in.Kind {
	case linWrite:
		next := s
		copy(next.Units[in.Unit:in.Unit+in.N], in.Values[:in.N])
		return maybe(next)
	case linRead:
		if out.Unknown || slices.Equal(s.Units[in.Unit:in.Unit+in.N], out.Values[:in.N]) {
			return []linState{s}
		}
		return nil
	case linCAW:
		match := s.Units[in.Unit] == in.Values[0]
		next := s
		if match {
			next.Units[in.Unit] = in.Values[1]
		}
		switch {
		case out.Unknown:
			return maybe(next)
		case out.Miscompare != match:
			return []linState{next}
		}
		return nil
	case linRegister:
		next := s
		next.Keys[in.Client] = in.Values[0]
		return maybe(next)
	case linReadKeys:
		if out.Unknown || slices.Equal(s.sortedKeys(), out.Keys) {
			return []linState{s}
		}
		return nil
	case linPreempt:
		// No persistent reservation is ever taken: PREEMPT removes the
		// other nexuses' registrations with the key, and is a
		// reservation conflict when the client is not registered with
		// its key or no other nexus holds the key preempted.
		next, removed := s, false
		for i, k := range s.Keys {
			if i != in.Client && k != 0 && k == in.Values[1] {
				next.Keys[i], removed = 0, true
			}
		}
		valid := in.Values[0] != 0 && s.Keys[in.Client] == in.Values[0] && removed
		replayed := in.Retry && !valid && in.Values[0] != 0 && s.Keys[in.Client] == in.Values[0] && !slices.Contains(s.Keys[:], in.Values[1])
		switch {
		case replayed && !out.Conflict:
			// The first outcome, GOOD, of the attempt that took effect.
			return []linState{s}
		case out.Unknown && valid:
			return maybe(next)
		case out.Unknown || (out.Conflict && !valid):
			return []linState{s}
		case !out.Conflict && valid:
			return []linState{next}
		}
		return nil
	}
	panic(fmt.Sprintf("unknown op kind %d", in.Kind))
}

// linModel is the porcupine model: block operations and reservation
// operations touch disjoint parts of the state, so they are checked as
// two partitions.
func linModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			var blocks, keys []porcupine.Operation
			for _, op := range history {
				switch op.Input.(linInput).Kind {
				case linRegister, linReadKeys, linPreempt:
					keys = append(keys, op)
				default:
					blocks = append(blocks, op)
				}
			}
			return [][]porcupine.Operation{blocks, keys}
		},
		Init: func() []any { return []any{linState{}} },
		Step: func(state, input, output any) []any {
			var out []any
			for _, s := range linStep(state.(linState), input.(linInput), output.(linOutput)) {
				out = append(out, s)
			}
			return out
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(linInput), output.(linOutput)
			var b strings.Builder
			fmt.Fprintf(&b, "c%d@%s %s", in.Client, in.Array, in.Kind)
			switch in.Kind {
			case linWrite:
				fmt.Fprintf(&b, " u%d=%s", in.Unit, hexList(in.Values[:in.N]))
			case linRead:
				fmt.Fprintf(&b, " u%d..%d", in.Unit, in.Unit+in.N-1)
			case linCAW:
				fmt.Fprintf(&b, " u%d %x→%x", in.Unit, in.Values[0], in.Values[1])
			case linRegister:
				fmt.Fprintf(&b, " key %x", in.Values[0])
			case linPreempt:
				fmt.Fprintf(&b, " with %x of %x", in.Values[0], in.Values[1])
			}
			switch {
			case out.Unknown:
				fmt.Fprintf(&b, " → unknown (%s)", out.Sense)
			case in.Kind == linRead:
				fmt.Fprintf(&b, " → %s", hexList(out.Values[:in.N]))
			case in.Kind == linReadKeys:
				fmt.Fprintf(&b, " → %s", hexList(out.Keys))
			case out.Miscompare:
				b.WriteString(" → miscompare")
			case out.Conflict:
				b.WriteString(" → reservation conflict")
			default:
				b.WriteString(" → ok")
			}
			return b.String()
		},
		DescribeState: func(state any) string {
			s := state.(linState)
			return fmt.Sprintf("units %s keys %s", hexList(s.Units[:]), hexList(s.Keys[:]))
		},
	}
	return nm.ToModel()
}

func hexList(v []uint64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%x", x)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// linRecorder collects the history. Times are nanoseconds since start on
// the monotonic clock.
type linRecorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
}

// unknownReturn marks an operation of unknown outcome until finish gives
// it the end of the history as its return.
const unknownReturn = -1

func newLinRecorder() *linRecorder { return &linRecorder{start: time.Now()} }

func (r *linRecorder) now() int64 { return int64(time.Since(r.start)) }

func (r *linRecorder) add(client int, in linInput, out linOutput, call, ret int64) {
	if out.Unknown {
		ret = unknownReturn
	}
	r.mu.Lock()
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
	r.mu.Unlock()
}

// finish returns the history, operations of unknown outcome returning
// after everything else.
func (r *linRecorder) finish() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	end := r.now()
	for _, op := range r.ops {
		end = max(end, op.Return, op.Call)
	}
	ops := slices.Clone(r.ops)
	for i := range ops {
		if ops[i].Return == unknownReturn {
			ops[i].Return = end + 1
		}
	}
	return ops
}

// linExplain narrows a history the checker refused: for the partition
// that fails, it finds the shortest prefix (by call time) that is not
// linearizable and renders its last operation with every operation on
// the same units (or keys) that could be concurrent with or precede it
// closely, for the test log.
func linExplain(model porcupine.Model, history []porcupine.Operation) string {
	for _, part := range model.Partition(history) {
		if porcupine.CheckOperations(model, part) {
			continue
		}
		ops := slices.Clone(part)
		slices.SortFunc(ops, func(a, b porcupine.Operation) int { return cmpInt64(a.Call, b.Call) })
		// The shortest failing prefix: prefixes of a linearizable
		// history are linearizable, so binary search works.
		lo, hi := 1, len(ops)
		for lo < hi {
			mid := (lo + hi) / 2
			if porcupine.CheckOperations(model, ops[:mid]) {
				lo = mid + 1
			} else {
				hi = mid
			}
		}
		last := ops[lo-1]
		lin := last.Input.(linInput)
		touches := func(op porcupine.Operation) bool {
			in := op.Input.(linInput)
			if in.Kind.onKeys() {
				return lin.Kind.onKeys()
			}
			return in.Unit < lin.Unit+lin.N && lin.Unit < in.Unit+in.N
		}
		// Also show, for each unit (or client's key), the last change
		// acknowledged before the operation was called, however old.
		lastChange := map[int]int{}
		for i, op := range ops[:lo] {
			in, out := op.Input.(linInput), op.Output.(linOutput)
			if out.Unknown || op.Return >= last.Call || !touches(op) {
				continue
			}
			switch in.Kind {
			case linWrite, linCAW:
				if in.Kind == linCAW && out.Miscompare {
					continue
				}
				for u := in.Unit; u < in.Unit+in.N; u++ {
					if j, ok := lastChange[u]; !ok || ops[j].Return < op.Return {
						lastChange[u] = i
					}
				}
			case linRegister, linPreempt:
				k := 100 + in.Client
				if j, ok := lastChange[k]; !ok || ops[j].Return < op.Return {
					lastChange[k] = i
				}
			}
		}
		show := map[int]bool{}
		for _, i := range lastChange {
			show[i] = true
		}
		var b strings.Builder
		fmt.Fprintf(&b, "the first %d of %d operations of a partition are not linearizable; the last of them (*), with the operations on the same data that are concurrent with it or returned at most 200ms before it was called, and the last change to each unit or key acknowledged before it (times in ms from the start):\n", lo, len(ops))
		for i, op := range ops[:lo] {
			recent := op.Return >= last.Call-int64(200*time.Millisecond) || op.Output.(linOutput).Unknown
			if !show[i] && (!touches(op) || !recent) {
				continue
			}
			mark := " "
			if op.Call == last.Call && op.ClientId == last.ClientId {
				mark = "*"
			}
			fmt.Fprintf(&b, "%s [%9.3f, %9.3f] %s\n", mark, ms(op.Call), ms(op.Return), model.DescribeOperation(op.Input, op.Output))
		}
		return b.String()
	}
	return "every partition is linearizable on its own"
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }
