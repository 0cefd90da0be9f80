package mediator

import "testing"

// TestDecideProperties checks the elect rule over every stored record and
// request with small epochs: a win moves the pod to the request's epoch +
// 1 under the asking array; only a win changes the record, and a change
// never lowers the epoch; a loss answers the stored record; and of two
// arrays asking at the same epoch, one after the other, at most one wins
// (exactly one when the pod was not already past that epoch).
func TestDecideProperties(t *testing.T) {
	arrays := []string{"a", "b"}
	for se := uint64(0); se <= 6; se++ {
		for _, sw := range []string{"", "a", "b"} {
			if (se == 0) != (sw == "") {
				continue
			}
			stored := Record{Epoch: se, Winner: sw}
			for e := uint64(1); e <= 6; e++ {
				for _, arr := range arrays {
					req := ElectRequest{Pod: "p", Epoch: e, Array: arr}
					next, changed, res := Decide(stored, req)
					switch {
					case res.Won && (res.Epoch != e+1 || res.Winner != arr):
						t.Fatalf("%+v %+v: won %+v", stored, req, res)
					case changed && (!res.Won || next.Epoch <= stored.Epoch || next != (Record{e + 1, arr})):
						t.Fatalf("%+v %+v: changed to %+v, %+v", stored, req, next, res)
					case !changed && next != stored:
						t.Fatalf("%+v %+v: next %+v without a change", stored, req, next)
					case !res.Won && (res.Epoch != stored.Epoch || res.Winner != stored.Winner):
						t.Fatalf("%+v %+v: lost with %+v", stored, req, res)
					case res.Won && !changed && stored != (Record{e + 1, arr}):
						t.Fatalf("%+v %+v: a retry's win without being the stored winner", stored, req)
					}
				}
				// Two arrays at epoch e, in both orders.
				for _, order := range [][2]string{{"a", "b"}, {"b", "a"}} {
					n1, _, r1 := Decide(stored, ElectRequest{Pod: "p", Epoch: e, Array: order[0]})
					_, _, r2 := Decide(n1, ElectRequest{Pod: "p", Epoch: e, Array: order[1]})
					wins := 0
					for _, r := range []ElectResult{r1, r2} {
						if r.Won {
							wins++
						}
					}
					if wins > 1 || (se <= e && wins != 1) {
						t.Fatalf("%+v, epoch %d, %v: %d winners (%+v, %+v)", stored, e, order, wins, r1, r2)
					}
				}
			}
		}
	}
}
