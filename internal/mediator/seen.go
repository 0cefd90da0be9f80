package mediator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
)

// seenState is what an array remembers of the mediators it has used,
// durably (ClientOptions.SeenFile), so that a mediator restarted from an
// older copy of its state is noticed also after the array restarts.
type seenState struct {
	Format int `json:"format"`
	// Mediators are by mediator id.
	Mediators map[string]seenMediator `json:"mediators"`
	// Bound maps a configured URL to the id of the mediator first found
	// there; another id at that URL is a rebuilt mediator.
	Bound map[string]string `json:"bound"`
}

// seenMediator is what an array remembers of one mediator.
type seenMediator struct {
	// Generation is the highest generation seen.
	Generation uint64 `json:"generation"`
	// RolledBack is set once the mediator reported a lower generation,
	// and cleared only by a reset-generation above Generation.
	RolledBack bool `json:"rolled_back,omitempty"`
	// Reported is the generation it reported then.
	Reported uint64 `json:"reported,omitempty"`
}

const seenFormat = 1

func newSeenState() seenState {
	return seenState{Format: seenFormat, Mediators: map[string]seenMediator{}, Bound: map[string]string{}}
}

// loadSeen reads the seen file; a missing one is an empty memory.
func loadSeen(path string) (seenState, error) {
	st := newSeenState()
	if path == "" {
		return st, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("mediator memory: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil || st.Format != seenFormat {
		return newSeenState(), fmt.Errorf("mediator memory %s is damaged (%v, format %d): remove it to start afresh; "+
			"this array then cannot tell whether its mediator was rolled back before", path, err, st.Format)
	}
	if st.Mediators == nil {
		st.Mediators = map[string]seenMediator{}
	}
	if st.Bound == nil {
		st.Bound = map[string]string{}
	}
	return st, nil
}

// verdict is what an array makes of a mediator's answer.
type verdict struct {
	ok      bool   // the answer may be used
	msg     string // why not
	changed bool   // the memory changed and must be made durable
}

// floors returns the highest generation seen of each mediator: taken when
// a request is sent, they are what its answer may not go below. (Answers
// to requests sent at once may arrive in any order, each with the
// generation at which the mediator decided it, so an answer below a
// generation received while it was under way proves nothing.)
func (st *seenState) floors() map[string]uint64 {
	out := make(map[string]uint64, len(st.Mediators))
	for id, m := range st.Mediators {
		out[id] = m.Generation
	}
	return out
}

// judge checks an answer of the mediator id at url reporting generation
// gen and reset generation reset, to a request sent when the memory's
// generations were floors, and updates the memory: the answer is usable
// unless the mediator went below a generation seen before the request
// (now, or before until a reset above it), or another mediator answers at
// a URL bound to one.
func (st *seenState) judge(url, id string, gen, reset uint64, floors map[string]uint64) verdict {
	if b, ok := st.Bound[url]; ok && b != id {
		return verdict{msg: fmt.Sprintf("the mediator at %s now has id %s, not %s as before: it was rebuilt or replaced and has none "+
			"of the old one's records of races, so this array will not race through it. Once every stretched pod is in sync "+
			"on both arrays, accept it by running `metro array setattr --mediator %s --mediator-authkey-file FILE` "+
			"(and --mediator-ca) again on this array", url, id, b, url)}
	}
	m := st.Mediators[id]
	v := verdict{ok: true}
	switch {
	case m.RolledBack && gen > m.Generation && reset > m.Generation:
		m.RolledBack, m.Reported = false, 0 // an operator's reset above what was seen
	case m.RolledBack:
		return verdict{msg: rolledBackMessage(url, id, m.Reported, m.Generation)}
	case gen < floors[id]:
		st.Mediators[id] = seenMediator{Generation: m.Generation, RolledBack: true, Reported: gen}
		return verdict{msg: rolledBackMessage(url, id, gen, m.Generation), changed: true}
	}
	if gen > m.Generation || st.Mediators[id] != m {
		m.Generation = max(m.Generation, gen)
		st.Mediators[id] = m
		v.changed = true
	}
	if _, ok := st.Bound[url]; !ok {
		st.Bound[url] = id
		v.changed = true
	}
	return v
}

func rolledBackMessage(url, id string, reported, seen uint64) string {
	return fmt.Sprintf("the mediator at %s (id %s) reports generation %d, lower than generation %d this array saw from it: "+
		"it was started from an older copy of its state and may have lost records of races it decided (and, while it "+
		"ran so, decided races again for arrays that had not seen more), so this array will not race through it, "+
		"also if its newest state is put back. Once every stretched pod is in sync on both arrays, stop it, run `metro mediator reset-generation --data-dir DIR --above N` with N the highest "+
		"generation the arrays report (%d here), and start it again", url, id, reported, seen, seen)
}
