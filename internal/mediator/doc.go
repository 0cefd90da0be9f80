// Package mediator is the arbiter of failover between the two arrays of a
// stretched pod: the service (`metro mediator run`), the durable state it
// keeps behind a Backend, and the client an array uses to reach it.
//
// The mediator is passive: arrays heartbeat it so that they always know
// whether they can reach it, and ask it to decide only when the link
// between them fails. It contacts nobody. One mediator serves many array
// pairs and many pods.
//
// # Wire protocol
//
// HTTP/1.1 and JSON over TLS 1.3, by default on port 9095. Every request
// carries `Authorization: Bearer <auth key>`; the mediator accepts up to
// two keys at once, so that a key can be rotated without stopping it.
//
//	POST /v1/heartbeat {"array":"<array id>"}
//	  200 {"mediator":"<mediator id>","generation":G}
//	POST /v1/elect {"pod":"<pod id>","epoch":E,"array":"<array id>"}
//	  200 {"won":true|false,"epoch":E2,"winner":"<array id>","generation":G,
//	       "mediator":"<mediator id>"}
//	GET  /v1/status
//	  200 {"mediator":..., "generation":G, "pods":N, "arrays":[...]}
//	errors: 400 bad input, 401 missing or wrong key, 405, 503 (the
//	mediator cannot make its state durable), with {"error":"..."}
//
// Answers may carry "reset_generation": the generation that `metro
// mediator reset-generation` last set, 0 (left out) when it never ran.
//
// # The race (Decide)
//
// Per pod the mediator stores {epoch, winner}. elect(pod, E, array) is won
// by the first caller at epoch E and moves the pod to E+1:
//
//	stored.epoch <= E                              -> store {E+1, array}; won, epoch E+1
//	stored.epoch == E+1 && stored.winner == array  -> won again (a retried request)
//	otherwise                                      -> lost, with the stored epoch and winner
//
// So a retry of a request that won is answered won again and changes
// nothing; a request at an epoch older than the stored one loses; two
// arrays racing at the same epoch get exactly one winner.
//
// # Generation and durability
//
// The state (every pod's record, the generation, the mediator's random id
// made at its first start) is synced to disk before any answer that
// depends on it is sent. The generation only grows: every start adds 1
// (StartStep) and every stored change adds 2 (ChangeStep). Arrays remember,
// durably and per mediator id, the highest generation they have seen; a
// mediator that reports a lower one was restarted from an older copy of
// its state and may have forgotten races it decided, so the array treats
// it as unreachable ("rolled back") until an operator raises its
// generation deliberately (`metro mediator reset-generation`). The two
// steps make the case of one lost change detectable: a copy taken at G
// restarts at G+1, while the one change made after the copy had already
// reported G+2. Only one lost start, which loses no record, goes unnoticed.
// An array also notices a mediator with a new id at the same URL (rebuilt
// from nothing) and treats it the same way until it is configured again.
//
// What detection cannot see: an array judges only by the generations it
// has seen itself. A race decided for one array and lost with the copy is
// missing for the other array too if that array never heard of it; never
// restore a mediator from a backup while a pod is served by one array
// alone.
package mediator
