package mediator

// Record is what the mediator stores for a pod: the epoch the last race
// moved it to and the array that won that race.
type Record struct {
	Epoch  uint64 `json:"epoch"`
	Winner string `json:"winner"`
}

// ElectResult is the outcome of a race for a pod, as an array sees it.
type ElectResult struct {
	// Won reports whether the asking array won.
	Won bool
	// Epoch is the pod's epoch at the mediator after the race: the
	// request's epoch + 1 when won.
	Epoch uint64
	// Winner is the array that holds that epoch.
	Winner string
}

// Generation steps: a start adds StartStep to the generation, a stored
// change ChangeStep (see the package doc for why they differ).
const (
	StartStep  = 1
	ChangeStep = 2
)

// Decide is the elect rule, without I/O: given the pod's stored record
// (the zero Record for a pod never raced) and a valid request, it returns
// the record to store, whether that differs from stored (it must then be
// made durable before the answer is sent), and the answer.
func Decide(stored Record, req ElectRequest) (next Record, changed bool, res ElectResult) {
	switch {
	case stored.Epoch <= req.Epoch:
		next = Record{Epoch: req.Epoch + 1, Winner: req.Array}
		return next, true, ElectResult{Won: true, Epoch: next.Epoch, Winner: next.Winner}
	case stored.Epoch == req.Epoch+1 && stored.Winner == req.Array:
		return stored, false, ElectResult{Won: true, Epoch: stored.Epoch, Winner: stored.Winner}
	default:
		return stored, false, ElectResult{Won: false, Epoch: stored.Epoch, Winner: stored.Winner}
	}
}
