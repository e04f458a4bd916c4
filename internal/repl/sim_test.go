package repl

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/messages"
)

// The scenario runner: two or three regions in memory, each a shell around
// the core as small as the protocol allows. Records are maps (a write is a
// compare-and-set in the real shell; here lose-cas plays the other writer),
// the network is a queue of sealed messages that commands deliver, drop,
// duplicate and reorder, and the HSM is a fake whose results are the core's
// inputs. Every command prints what it caused: messages sent and received
// (with Match's verdict), records changed, events.

// world is the state of one scenario.
type world struct {
	now     time.Time
	regions map[string]*region
	order   []string
	net     []*wire // messages in flight, oldest first
	held    []*wire // messages delayed (hold) until release
	// published is when each message (by digest) was first published:
	// the outbox stream drops a publish of the same bytes within
	// dedupWindow.
	published map[string]time.Time
	seq       map[string]int
	log       []string
}

// region is one region: its records, its fake HSM and its faults.
type region struct {
	w    *world
	cfg  Config
	keys map[string]*Key
	runs map[string]*Run
	hsm  *fakeHSM
	// crash: the next delivery here stops after its writes, before it
	// sends or acks (the message is redelivered).
	crash    bool
	crashing bool // handling the message that crashes
	// loseCAS: the next run write here loses to another worker of the
	// region that made the same transition first.
	loseCAS bool
}

// dedupWindow is the outbox stream's duplicate window (layout.DedupWindow).
const dedupWindow = 20 * time.Minute

// wire is a message in flight.
type wire struct {
	env *messages.Envelope
}

func (x *wire) String() string {
	m := &x.env.Message
	return fmt.Sprintf("%s->%s %s %s %s", m.Src, m.Dst, shortType(m.Type), m.ReplicationID, m.MsgID)
}

func shortType(t messages.Type) string {
	s := string(t)
	if i := strings.IndexByte(s, '.'); i >= 0 && strings.HasPrefix(s, "replication.") {
		return s[i+1:]
	}
	return s
}

// fakeHSM holds key material as labels and RAKBs by run. Its answers are
// deterministic: a wrapped key is the material's label, a key confirmation
// a hash of the material and the transcript.
type fakeHSM struct {
	keys   map[KeyRef]string
	rakbs  map[string]bool
	unwrap []string // queued results for the next unwraps ("fails", "rakb-gone", "exists")
}

func (h *fakeHSM) kc(ref KeyRef, transcript []byte) []byte {
	s := sha256.Sum256(append([]byte(h.keys[ref]+"|"), transcript...))
	return s[:8]
}

func newWorld(names []string) *world {
	w := &world{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), regions: map[string]*region{}, seq: map[string]int{}, published: map[string]time.Time{}}
	for _, n := range names {
		w.regions[n] = &region{w: w, cfg: Config{
			Region: n, Partition: "p", MessageTTL: 5 * time.Minute, ReplicationTTL: 10 * time.Minute,
			RunTimeout: 6 * time.Minute, MaxAttempts: 3,
		}, keys: map[string]*Key{}, runs: map[string]*Run{}, hsm: &fakeHSM{keys: map[KeyRef]string{}, rakbs: map[string]bool{}}}
		w.order = append(w.order, n)
	}
	return w
}

func (w *world) id(prefix string) string {
	w.seq[prefix]++
	return prefix + strconv.Itoa(w.seq[prefix])
}

func (w *world) printf(format string, args ...any) {
	w.log = append(w.log, fmt.Sprintf(format, args...))
}

// send seals m (fake: its JSON, digest as messages.Digest) and queues it;
// a run's message is also recorded in its run first.
func (g *region) seal(m *messages.Message) Sealed {
	if m.MsgID == "" {
		m.MsgID = g.w.id("m")
	}
	raw, _ := json.Marshal(m)
	return Sealed{Raw: raw, Digest: messages.Digest(raw), KID: []byte("kid-" + g.cfg.Region)}
}

func (g *region) send(m *messages.Message, s Sealed) {
	if g.crashing {
		g.w.printf("not sent (crash): %s->%s %s %s %s", m.Src, m.Dst, shortType(m.Type), m.ReplicationID, m.MsgID)
		return
	}
	// Nats-Msg-Id is the message's hash (layout.MsgID): the same bytes.
	if at, ok := g.w.published[string(s.Digest)]; ok && g.w.now.Sub(at) < dedupWindow {
		g.w.printf("publish %s->%s %s %s %s: de-duplicated by the outbox", m.Src, m.Dst, shortType(m.Type), m.ReplicationID, m.MsgID)
		return
	}
	g.w.published[string(s.Digest)] = g.w.now
	var copyM messages.Message
	_ = json.Unmarshal(s.Raw, &copyM)
	x := &wire{env: &messages.Envelope{KID: s.KID, Message: copyM, Raw: s.Raw, Digest: s.Digest}}
	g.w.net = append(g.w.net, x)
	g.w.printf("send %s", x)
}

func (g *region) sendNew(m *messages.Message) {
	g.send(m, g.seal(m))
}

// resend re-publishes a run's stored reply (the outbox de-duplicates by
// msg_id; in flight here means queued again).
func (g *region) resend(run *Run) {
	if len(run.LastSent) == 0 {
		return
	}
	var m messages.Message
	_ = json.Unmarshal(run.LastSent, &m)
	g.send(&m, Sealed{Raw: run.LastSent, Digest: messages.Digest(run.LastSent), KID: []byte("kid-" + g.cfg.Region)})
}

func (g *region) event(typ string, detail string) {
	if g.crashing {
		g.w.printf("no event (crash): %s %s", typ, detail)
		return
	}
	g.w.printf("event %s %s %s", g.cfg.Region, typ, detail)
}

// writeRun stores next, unless the region was told to lose the race: then
// another worker wrote the same transition first, and the shell decides
// again on that record (Match), which finds the message consumed.
func (g *region) writeRun(env *messages.Envelope, next *Run) (stored bool) {
	if g.loseCAS {
		g.loseCAS = false
		other := *next
		g.runs[next.ID] = &other
		g.w.printf("%s: lost compare-and-set on run %s; read again", g.cfg.Region, next.ID)
		v := Match(&other, env)
		g.w.printf("%s: %s %s again: %s", g.cfg.Region, shortType(env.Message.Type), next.ID, v.Kind)
		if v.Kind == Redelivery {
			g.resend(&other)
		}
		return false
	}
	g.runs[next.ID] = next
	return true
}

// createKey makes a primary key with version 1 in g.
func (g *region) createKey() *Key {
	now := g.w.now
	id := g.w.id("k")
	k := &Key{
		KeyID: id, Partition: "p", Region: g.cfg.Region, Role: Primary, PrimaryRegion: g.cfg.Region,
		KeySpec: api.KeySpecSymmetricDefault, KeyUsage: api.KeyUsageEncryptDecrypt, Enabled: true,
		Versions: []uint32{1}, CurrentVersion: 1, CreatedAt: now, UpdatedAt: now, KeyState: KeyEnabled, Epoch: 1,
		VersionDetails: []KeyVersion{{Version: 1, State: VersionCurrent, ReplicatedTo: []string{g.cfg.Region}, CreatedAt: now, ActivatedAt: &now}},
	}
	g.keys[id] = k
	g.hsm.keys[KeyRef{id, 1}] = id + "/v1"
	g.event(api.EventKeyCreated, id)
	return k
}

func (g *region) key(id string) *Key {
	if id != "" {
		return g.keys[id]
	}
	for _, id := range sortedKeys(g.keys) {
		return g.keys[id]
	}
	return nil
}

// activeRun is the replica's run in flight, if any.
func (g *region) activeRun(r Replica) *Run {
	run := g.runs[r.ReplicationID]
	if run == nil || run.Ended() || run.Expired(g.w.now) {
		return nil
	}
	return run
}

// startRun is the source shell's startRun.
func (g *region) startRun(keyID, dst string, version uint32, attempt int) error {
	k := g.keys[keyID]
	if k == nil || k.Deleted {
		return NotFound("key %s not found", keyID)
	}
	r, e := CheckStart(k, dst, g.cfg)
	if e != nil {
		return e
	}
	if run := g.activeRun(r); run != nil {
		g.resend(run)
		return nil
	}
	version, err := StartVersion(k, dst, version)
	if err != nil {
		return err
	}
	if version == 0 {
		g.w.printf("%s: %s holds every version (run %s)", g.cfg.Region, dst, r.ReplicationID)
		return nil
	}
	run, m := Start(k, dst, version, attempt, g.w.id("r"), "", g.cfg, g.w.now)
	s := g.seal(m)
	run.Record(m, s)
	g.runs[run.ID] = run
	other := r.ReplicationID != "" && r.ReplicationID != run.ID && g.activeRun(r) != nil
	if lost, e := AttachRun(k, run, other, g.cfg, g.w.now); e != nil || lost {
		delete(g.runs, run.ID)
		if e != nil {
			return e
		}
		return nil
	}
	g.send(m, s)
	g.event(api.EventReplicationStarted, fmt.Sprintf("%s to %s v%d attempt %d", run.ID, dst, version, attempt))
	return nil
}

// deliver hands x to its destination region: the inbox shell.
func (w *world) deliver(x *wire) {
	env := x.env
	g := w.regions[env.Message.Dst]
	w.printf("deliver %s", x)
	crashed := g.crash
	if crashed {
		// The handler's writes happen; what it sends is lost with the
		// process, and the message (never acked) comes again.
		g.crash = false
		g.crashing = true
		g.handle(env)
		g.crashing = false
		w.net = append(w.net, x)
		w.printf("%s: crashed before sending; restarted from its records; %s redelivered later", g.cfg.Region, x)
		return
	}
	g.handle(env)
}

func (g *region) refused(env *messages.Envelope, r *Refusal) {
	g.w.printf("%s: refused %s: %s", g.cfg.Region, r.Reason, r.Detail)
}

func (g *region) verdict(env *messages.Envelope, v Verdict, run *Run) bool {
	switch v.Kind {
	case Redelivery:
		g.w.printf("%s: redelivery: answered with the stored reply", g.cfg.Region)
		if run != nil {
			g.resend(run)
		}
		return false
	case Refused:
		g.refused(env, v.Refusal)
		return false
	}
	return true
}

func (g *region) handle(env *messages.Envelope) {
	m := &env.Message
	now := g.w.now
	switch m.Type {
	case messages.TypeInit:
		run := g.runs[m.ReplicationID]
		v, rec, op := OnInit(run, g.keys[m.Init.KeyID], env, m.Init.Policy, g.cfg, now)
		if !g.verdict(env, v, run) {
			return
		}
		if g.hsm.rakbs[op.RunID] {
			g.w.printf("%s: rakb for %s left by a crashed handler: replaced", g.cfg.Region, op.RunID)
		}
		g.hsm.rakbs[op.RunID] = true
		reply := AfterRAKB(rec, []byte("rakb-"+op.RunID), g.cfg, now)
		s := g.seal(reply)
		rec.Record(reply, s)
		if g.loseCAS {
			// Another worker of the region handled the same init at the
			// same time and stored its run (with its own RAKB) first.
			g.loseCAS = false
			other := *rec
			other.RAKB = []byte("rakb-other-" + rec.ID)
			offer := AfterRAKB(&other, other.RAKB, g.cfg, now)
			s := g.seal(offer)
			other.Record(offer, s)
			g.runs[rec.ID] = &other
			g.send(offer, s)
			g.w.printf("%s: create run %s: exists (another worker); our RAKB destroyed", g.cfg.Region, rec.ID)
		}
		if g.runs[rec.ID] != nil {
			// Another worker took this init first: keep its RAKB.
			g.w.printf("%s: run %s stored by another worker meanwhile", g.cfg.Region, rec.ID)
			if Match(g.runs[rec.ID], env).Kind == Redelivery {
				g.resend(g.runs[rec.ID])
			}
			return
		}
		g.runs[rec.ID] = rec
		g.send(reply, s)
	case messages.TypeOffer:
		run := g.runs[m.ReplicationID]
		v := Match(run, env)
		if !g.verdict(env, v, run) {
			return
		}
		op, ref := OnOffer(run, env, g.cfg, now)
		if ref != nil {
			g.refused(env, ref)
			return
		}
		next, reply := AfterWrap(run, env, []byte("raka-"+run.ID), []byte("wrapped:"+g.hsm.keys[op.Ref]), g.cfg, now)
		s := g.seal(reply)
		next.Record(reply, s)
		next.ExpectedKC = g.hsm.kc(op.Ref, next.Transcript())
		if g.writeRun(env, next) {
			g.send(reply, s)
		}
	case messages.TypeMaterial:
		run := g.runs[m.ReplicationID]
		v := Match(run, env)
		if !g.verdict(env, v, run) {
			return
		}
		op, ref := OnMaterial(run, env, g.cfg)
		if ref != nil {
			g.refused(env, ref)
			return
		}
		res := g.unwrap(op)
		next, reply, held := AfterUnwrap(run, env, res, g.cfg, now)
		if held {
			reply.Receipt.KeyConfirmation = g.hsm.kc(op.Ref, next.Transcript())
			props := m.Material.Properties
			if k := g.keys[run.KeyID]; k == nil {
				g.keys[run.KeyID] = NewReplicaKey(run, props, nil, g.cfg, now)
				next.NewReplica = true
			} else {
				next.NewReplica, _ = StoreReplica(k, run, props, g.cfg, now)
			}
		}
		s := g.seal(reply)
		next.Record(reply, s)
		if g.writeRun(env, next) {
			g.send(reply, s)
			if next.State == Completed {
				typ := api.EventVersionReplicated
				if next.NewReplica {
					typ = api.EventReplicaCreated
				}
				g.event(typ, fmt.Sprintf("%s v%d", next.ID, next.Version))
			} else {
				g.event(api.EventReplicationFailed, next.ID+" "+next.Reason)
			}
		}
	case messages.TypeReceipt:
		run := g.runs[m.ReplicationID]
		v := Match(run, env)
		if v.Kind == Redelivery {
			g.w.printf("%s: redelivery: follow-up repeated", g.cfg.Region)
			g.followUp(run)
			return
		}
		if !g.verdict(env, v, run) {
			return
		}
		next, then, ref := OnReceipt(run, env, now)
		if ref != nil {
			g.refused(env, ref)
			return
		}
		if then == ReceiptIgnore {
			g.w.printf("%s: late receipt ignored: the run already ended FAILED", g.cfg.Region)
			return
		}
		if !g.writeRun(env, next) {
			return
		}
		if next.State == Completed {
			g.event(api.EventReplicationCompleted, next.ID)
		} else {
			g.event(api.EventReplicationFailed, next.ID+" "+next.Reason)
		}
		g.followUp(next)
	case messages.TypeSync:
		g.onSync(env)
	case messages.TypeStatus:
		g.onStatus(env)
	case messages.TypeHandover:
		g.onHandover(env)
	case messages.TypeAccept:
		g.onAccept(env)
	}
}

func (g *region) unwrap(op Unwrap) UnwrapResult {
	if len(g.hsm.unwrap) > 0 {
		r := g.hsm.unwrap[0]
		g.hsm.unwrap = g.hsm.unwrap[1:]
		g.w.printf("%s: hsm: unwrap %s", g.cfg.Region, r)
		switch r {
		case "fails":
			return UnwrapFailed
		case "rakb-gone":
			delete(g.hsm.rakbs, op.KDF.ReplicationID)
		case "exists":
			g.hsm.keys[op.Ref] = "other"
			return UnwrapKeyExists
		}
	}
	if !g.hsm.rakbs[op.KDF.ReplicationID] {
		if _, ok := g.hsm.keys[op.Ref]; ok {
			return UnwrapRAKBGoneKeyHeld
		}
		return UnwrapRAKBGone
	}
	if _, ok := g.hsm.keys[op.Ref]; ok {
		return UnwrapKeyExists
	}
	material, _ := strings.CutPrefix(string(op.Wrapped), "wrapped:")
	g.hsm.keys[op.Ref] = material
	delete(g.hsm.rakbs, op.KDF.ReplicationID)
	return Unwrapped
}

// followUp is what ends a source run: retry, or record the receipt in the
// key and what that leads to.
func (g *region) followUp(run *Run) {
	if Retryable(run) {
		g.retry(run)
		return
	}
	k := g.keys[run.KeyID]
	if k == nil {
		return
	}
	activated, _ := RecordReceipt(k, run, g.w.now)
	sync, next := AfterReceipt(k, run, activated)
	if activated != 0 {
		g.event(api.EventVersionActivated, fmt.Sprintf("%s v%d", k.KeyID, activated))
	}
	if sync {
		g.syncReplicas(k)
	}
	if next {
		if err := g.startRun(k.KeyID, run.Peer, 0, 1); err != nil {
			g.w.printf("%s: next version not started: %v", g.cfg.Region, err)
		}
	}
}

func (g *region) retry(failed *Run) {
	k := g.keys[failed.KeyID]
	if k != nil && k.Deleted {
		k = nil
	}
	d := Retry(failed, k, g.cfg)
	switch d.Kind {
	case RetryStart:
		g.w.printf("%s: retry %s: attempt %d", g.cfg.Region, failed.ID, d.Attempt)
		if err := g.startRun(failed.KeyID, failed.Peer, failed.Version, d.Attempt); err != nil {
			g.w.printf("%s: not retried: %v", g.cfg.Region, err)
		}
	case RetryGiveUp:
		if GiveUp(k, failed, d.Reason, g.w.now) {
			g.w.printf("%s: replica %s failed: %s", g.cfg.Region, failed.Peer, d.Reason)
		}
	}
}

func (g *region) syncReplicas(k *Key) {
	for _, dst := range SyncDue(k, g.cfg, g.w.now) {
		r, _ := k.Replica(dst)
		m := g.cfg.NewMessage(messages.TypeSync, g.w.id("s"), dst, g.w.now)
		m.Sync = SyncOf(k, r.StatusSeq)
		g.sendNew(m)
	}
}

func (g *region) sendStatus(k *Key, dst string, syncDigest []byte) {
	m := g.cfg.NewMessage(messages.TypeStatus, g.w.id("s"), dst, g.w.now)
	m.Status = StatusOf(k, syncDigest)
	g.sendNew(m)
}

func (g *region) ackStatus(k *Key, dst string, seq uint64) {
	m := g.cfg.NewMessage(messages.TypeSync, g.w.id("s"), dst, g.w.now)
	m.Sync = AckSyncOf(k, seq)
	g.sendNew(m)
}

func (g *region) onSync(env *messages.Envelope) {
	m := &env.Message
	s := m.Sync
	if ref := CheckSync(nil, m.Src, s, g.cfg); ref != nil {
		g.refused(env, ref)
		return
	}
	k := g.keys[s.KeyID]
	if k == nil {
		g.sendStatus(&Key{KeyID: s.KeyID, PrimaryRegion: m.Src, Deleted: true}, m.Src, env.Digest)
		return
	}
	if ref := CheckSync(k, m.Src, s, g.cfg); ref != nil {
		g.refused(env, ref)
		return
	}
	out := ApplySync(k, s, g.w.now)
	if out.Purge {
		delete(g.keys, k.KeyID)
		g.w.printf("%s: tombstone of %s removed (deletion acknowledged)", g.cfg.Region, k.KeyID)
	}
	if out.Activated != 0 {
		g.event(api.EventVersionActivated, fmt.Sprintf("%s v%d", k.KeyID, out.Activated))
	}
	if out.NewPrimary != "" {
		g.event(api.EventPrimaryUpdated, k.KeyID+" to "+out.NewPrimary)
		g.sendStatus(k, out.NewPrimary, nil)
	}
	g.sendStatus(k, m.Src, env.Digest)
}

func (g *region) onStatus(env *messages.Envelope) {
	m := &env.Message
	st := m.Status
	k := g.keys[st.KeyID]
	if k == nil || k.Deleted {
		g.refused(env, Refuse(ReasonUnknownKey, "status for key %s, unknown here", st.KeyID))
		return
	}
	if k.Role == ReplicaRole {
		if AnnounceAcked(k, m.Src, st) && DropAnnounce(k, m.Src) {
			g.w.printf("%s: %s knows the new primary", g.cfg.Region, m.Src)
		}
		return
	}
	if _, ok := k.Replica(m.Src); !ok {
		if st.State == messages.ReplicaStateDeleted {
			if len(st.SyncDigest) == 0 {
				g.ackStatus(k, m.Src, st.StatusSeq)
			}
			return
		}
		g.refused(env, Refuse(ReasonWrongPeer, "status from %s, which holds no replica of key %s", m.Src, st.KeyID))
		return
	}
	out := ApplyStatus(k, m.Src, st, g.cfg, g.w.now)
	for _, ev := range out.Events {
		g.event(ev.Type, strings.TrimSpace(ev.KeyID+" "+ev.Peer+" "+ev.Reason))
	}
	if out.Activated != 0 {
		g.event(api.EventVersionActivated, fmt.Sprintf("%s v%d", k.KeyID, out.Activated))
	}
	if len(out.Lost) > 0 {
		g.w.printf("%s: %s lacks versions %v; copying them again", g.cfg.Region, m.Src, out.Lost)
	}
	if k.AnyNeedsSync() {
		g.syncReplicas(k)
	}
	if CopyAfterStatus(k, m.Src) {
		if err := g.startRun(k.KeyID, m.Src, 0, 1); err != nil {
			g.w.printf("%s: version not sent: %v", g.cfg.Region, err)
		}
	}
	if len(st.SyncDigest) == 0 {
		r, _ := k.Replica(m.Src)
		g.ackStatus(k, m.Src, max(r.StatusSeq, st.StatusSeq))
	}
}

func (g *region) sendHandover(k *Key) {
	m := g.cfg.NewMessage(messages.TypeHandover, k.HandoverID, k.PendingPrimary, g.w.now)
	m.Handover = HandoverOf(k, g.cfg)
	s := g.seal(m)
	RecordHandover(k, m.ReplicationID, s.Digest)
	g.send(m, s)
}

func (g *region) onHandover(env *messages.Envelope) {
	m := &env.Message
	k := g.keys[m.Handover.KeyID]
	if k != nil && k.Deleted {
		k = nil
	}
	v, ref := CheckHandover(k, env, g.cfg)
	switch v {
	case HandoverRefused:
		g.refused(env, ref)
		return
	case HandoverAgain:
		g.w.printf("%s: taken over already: accept again", g.cfg.Region)
	default:
		if ref := TakeOver(k, env, g.cfg, g.w.now); ref != nil {
			g.refused(env, ref)
			return
		}
		g.event(api.EventPrimaryUpdateStarted, k.KeyID+" from "+m.Src)
	}
	a := g.cfg.NewMessage(messages.TypeAccept, m.ReplicationID, m.Src, g.w.now)
	a.Accept = AcceptOf(k, env)
	g.sendNew(a)
}

func (g *region) onAccept(env *messages.Envelope) {
	m := &env.Message
	k := g.keys[m.Accept.KeyID]
	if k == nil || k.Deleted {
		g.refused(env, Refuse(ReasonUnknownKey, "accept for key %s, unknown here", m.Accept.KeyID))
		return
	}
	switch v, ref := CheckAccept(k, env); v {
	case AcceptDuplicate:
		g.w.printf("%s: accept again: nothing to do", g.cfg.Region)
		return
	case AcceptRefused:
		g.refused(env, ref)
		return
	}
	if ref := BecomeReplica(k, m.Src, m.ReplicationID, g.w.now); ref != nil {
		g.refused(env, ref)
		return
	}
	g.event(api.EventPrimaryUpdated, k.KeyID+" to "+m.Src)
	g.sendStatus(k, m.Src, nil)
	g.announce(k)
}

func (g *region) announce(k *Key) {
	for _, dst := range k.Announce {
		m := g.cfg.NewMessage(messages.TypeSync, g.w.id("s"), dst, g.w.now)
		m.Sync = SyncOf(k, 0)
		g.sendNew(m)
	}
}

// deleteNow destroys the versions and removes the record or leaves a
// tombstone.
func (g *region) deleteNow(k *Key) {
	for _, v := range k.Versions {
		delete(g.hsm.keys, KeyRef{k.KeyID, v})
	}
	if k.Role == Primary {
		delete(g.keys, k.KeyID)
		g.event(api.EventKeyDeleted, k.KeyID)
		return
	}
	if Tombstone(k, g.w.now) {
		g.event(api.EventReplicaDeleted, k.KeyID)
		g.sendStatus(k, k.PrimaryRegion, nil)
	}
}

// sweep is the sweeper: runs past their deadline, ended runs' follow-ups,
// and every key's duties.
func (g *region) sweep() {
	now := g.w.now
	for _, id := range sortedKeys(g.runs) {
		run := g.runs[id]
		if run.Ended() {
			continue
		}
		next := TimeOut(run, g.cfg, now)
		if next == nil {
			continue
		}
		g.runs[id] = next
		g.w.printf("%s: run %s timed out", g.cfg.Region, id)
		if run.Role == Destination {
			delete(g.hsm.rakbs, id)
		} else {
			g.retry(next)
		}
	}
	for _, id := range sortedKeys(g.keys) {
		g.sweepKey(id)
	}
}

func (g *region) sweepKey(id string) {
	k := g.keys[id]
	if k == nil {
		return
	}
	now := g.w.now
	d := Duties(k, g.cfg, now)
	switch {
	case d.Delete:
		g.deleteNow(k)
		g.sweepKey(id)
		return
	case d.DropTombstone:
		delete(g.keys, id)
		g.w.printf("%s: tombstone of %s removed (abandoned: %v)", g.cfg.Region, id, d.Abandoned)
		return
	}
	if d.ResendHandover {
		k.HandoverSentAt = now
		g.sendHandover(k)
	}
	for _, dst := range d.Copy {
		if r, _ := k.Replica(dst); g.activeRun(r) == nil {
			if err := g.startRun(id, dst, 0, 1); err != nil {
				g.w.printf("%s: copy to %s not started: %v", g.cfg.Region, dst, err)
			}
		}
	}
	if d.Activate {
		if v := k.TryActivate(now); v != 0 {
			g.event(api.EventVersionActivated, fmt.Sprintf("%s v%d", id, v))
		}
	}
	if d.Sync {
		g.syncReplicas(k)
	}
	if d.ResendStatus {
		k.StatusSentAt = now
		g.sendStatus(k, k.PrimaryRegion, nil)
	}
	if d.ResendAnnounce {
		k.AnnounceSentAt = now
		g.announce(k)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// snapshot is every record's summary, by "region kind id".
func (w *world) snapshot() map[string]string {
	out := map[string]string{}
	for _, n := range w.order {
		g := w.regions[n]
		for id, k := range g.keys {
			out[n+" key "+id] = keySummary(k)
		}
		for id, r := range g.runs {
			out[n+" run "+id] = runSummary(r)
		}
	}
	return out
}

func runSummary(r *Run) string {
	s := fmt.Sprintf("%s %s v%d peer=%s", r.Role, r.State, r.Version, r.Peer)
	if r.Role == Source {
		s += fmt.Sprintf(" attempt=%d", r.Attempt)
	}
	if r.TimedOut {
		s += " timed-out"
	}
	if r.NewReplica {
		s += " new-replica"
	}
	if r.Reason != "" {
		s += " reason=" + strconv.Quote(r.Reason)
	}
	return s
}

func keySummary(k *Key) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s epoch=%d current=%d versions=%v", k.Role, k.KeyState, k.Epoch, k.CurrentVersion, k.Versions)
	if k.Role == Primary {
		for _, d := range k.VersionDetails {
			fmt.Fprintf(&b, " v%d:%s%v", d.Version, d.State, d.ReplicatedTo)
		}
		for _, r := range k.Replicas {
			fmt.Fprintf(&b, " %s=%s(synced %d", r.Region, r.State, r.SyncedEpoch)
			if r.StatusSeq != 0 {
				fmt.Fprintf(&b, ", status %d", r.StatusSeq)
			}
			if r.ReplicationID != "" {
				fmt.Fprintf(&b, ", run %s", r.ReplicationID)
			}
			if r.Reason != "" {
				fmt.Fprintf(&b, ", %q", r.Reason)
			}
			b.WriteString(")")
		}
		if k.PendingPrimary != "" {
			fmt.Fprintf(&b, " pending-primary=%s", k.PendingPrimary)
		}
	} else {
		fmt.Fprintf(&b, " primary=%s", k.PrimaryRegion)
		if k.StatusSeq != 0 || k.StatusAcked != 0 {
			fmt.Fprintf(&b, " status=%d acked=%d", k.StatusSeq, k.StatusAcked)
		}
		if len(k.Announce) > 0 {
			fmt.Fprintf(&b, " announce=%v", k.Announce)
		}
	}
	if k.DeletionDate != nil {
		fmt.Fprintf(&b, " deletion=%s", k.DeletionDate.Format(time.RFC3339))
	}
	if k.Deleted {
		b.WriteString(" TOMBSTONE")
	}
	return b.String()
}

// diff prints the records that changed between two snapshots.
func (w *world) diff(before, after map[string]string) {
	var names []string
	for n := range after {
		if before[n] != after[n] {
			names = append(names, n)
		}
	}
	for n := range before {
		if _, ok := after[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		if v, ok := after[n]; ok {
			w.printf("%s: %s", n, v)
		} else {
			w.printf("%s: gone", n)
		}
	}
}

// pick finds the message in flight that args name: "[src->dst] [type]
// [run id] [#n]" (the n-th match, from 1; default the first in flight).
func (w *world) pick(args []string) (int, error) {
	route, typ, runID, nth := "", "", "", 1
	for _, a := range args {
		switch {
		case strings.Contains(a, "->"):
			route = a
		case strings.HasPrefix(a, "#"):
			nth, _ = strconv.Atoi(a[1:])
		case strings.Contains(a, ".") || a == "init" || a == "offer" || a == "material" || a == "receipt":
			typ = a
		default:
			runID = a
		}
	}
	n := 0
	for i, x := range w.net {
		m := &x.env.Message
		if route != "" && route != m.Src+"->"+m.Dst {
			continue
		}
		if typ != "" && typ != shortType(m.Type) && typ != string(m.Type) {
			continue
		}
		if runID != "" && runID != m.ReplicationID {
			continue
		}
		if n++; n == nth {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no message in flight matches %q (in flight: %s)", strings.Join(args, " "), w.inFlight())
}

func (w *world) inFlight() string {
	var s []string
	for _, x := range w.net {
		s = append(s, x.String())
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// run executes one command line.
func (w *world) run(line string) error {
	f := strings.Fields(line)
	cmd, args := f[0], f[1:]
	keyAt := func(g *region) *Key {
		k := g.key("")
		if k == nil {
			w.printf("%s: %s refused: no key here", g.cfg.Region, cmd)
		}
		return k
	}
	reg := func(i int) (*region, error) {
		if i >= len(args) {
			return nil, fmt.Errorf("%s: region missing", cmd)
		}
		g := w.regions[args[i]]
		if g == nil {
			return nil, fmt.Errorf("%s: no region %q", cmd, args[i])
		}
		return g, nil
	}
	switch cmd {
	case "create":
		g, err := reg(0)
		if err != nil {
			return err
		}
		g.createKey()
	case "replicate", "start":
		g, err := reg(0)
		if err != nil {
			return err
		}
		if len(args) < 2 {
			return fmt.Errorf("%s SRC DST", cmd)
		}
		k := keyAt(g)
		if k == nil {
			return nil
		}
		if err := g.startRun(k.KeyID, args[1], 0, 1); err != nil {
			w.printf("%s: request refused: %v", g.cfg.Region, err)
		}
	case "deliver":
		if len(args) == 1 && args[0] == "all" {
			for steps := 0; len(w.net) > 0; steps++ {
				if steps == 100 {
					return fmt.Errorf("deliver all: still %d in flight after 100 deliveries", len(w.net))
				}
				x := w.net[0]
				w.net = w.net[1:]
				w.deliver(x)
			}
			return nil
		}
		i, err := w.pick(args)
		if err != nil {
			return err
		}
		x := w.net[i]
		w.net = slices.Delete(w.net, i, i+1)
		w.deliver(x)
	case "drop":
		i, err := w.pick(args)
		if err != nil {
			return err
		}
		w.printf("dropped %s", w.net[i])
		w.net = slices.Delete(w.net, i, i+1)
	case "dup":
		i, err := w.pick(args)
		if err != nil {
			return err
		}
		c := *w.net[i]
		w.net = append(w.net, &c)
		w.printf("duplicated %s", &c)
	case "tamper":
		// A copy with the same msg_id and other bytes (as a replay would
		// be after a bit flip the signature check missed, or a reused
		// msg_id): its sent_at moves by a millisecond.
		i, err := w.pick(args)
		if err != nil {
			return err
		}
		var m messages.Message
		_ = json.Unmarshal(w.net[i].env.Raw, &m)
		m.SentAt++
		raw, _ := json.Marshal(&m)
		x := &wire{env: &messages.Envelope{KID: w.net[i].env.KID, Message: m, Raw: raw, Digest: messages.Digest(raw)}}
		w.net = append(w.net, x)
		w.printf("tampered copy %s (same msg_id, other bytes)", x)
	case "hold":
		// The message is delayed: out of the network until release.
		i, err := w.pick(args)
		if err != nil {
			return err
		}
		w.printf("held %s", w.net[i])
		w.held = append(w.held, w.net[i])
		w.net = slices.Delete(w.net, i, i+1)
	case "release":
		for _, x := range w.held {
			w.printf("released %s", x)
		}
		w.net = append(w.net, w.held...)
		w.held = nil
	case "reorder":
		// The newest message in flight overtakes the others.
		if len(w.net) > 1 {
			x := w.net[len(w.net)-1]
			w.net = append([]*wire{x}, w.net[:len(w.net)-1]...)
			w.printf("reordered: %s first", x)
		}
	case "net":
		w.printf("in flight: %s", w.inFlight())
	case "tick":
		if len(args) != 1 {
			return fmt.Errorf("tick DURATION")
		}
		d, err := time.ParseDuration(args[0])
		if err != nil {
			return err
		}
		w.now = w.now.Add(d)
		w.printf("now +%s", w.now.Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)))
		for _, n := range w.order {
			w.regions[n].sweep()
		}
	case "hsm":
		// hsm REGION unwrap fails|rakb-gone|exists
		g, err := reg(0)
		if err != nil {
			return err
		}
		if len(args) != 3 || args[1] != "unwrap" {
			return fmt.Errorf("hsm REGION unwrap RESULT")
		}
		g.hsm.unwrap = append(g.hsm.unwrap, args[2])
	case "crash":
		g, err := reg(0)
		if err != nil {
			return err
		}
		g.crash = true
	case "lose-cas":
		g, err := reg(0)
		if err != nil {
			return err
		}
		g.loseCAS = true
	case "rotate":
		g, err := reg(0)
		if err != nil {
			return err
		}
		k := keyAt(g)
		if k == nil {
			return nil
		}
		next, e := Reserve(k, g.cfg, w.now)
		if e != nil {
			w.printf("%s: rotate refused: %v", g.cfg.Region, e)
			return nil
		}
		g.hsm.keys[KeyRef{k.KeyID, next}] = fmt.Sprintf("%s/v%d", k.KeyID, next)
		activated, e := RecordVersion(k, next, g.cfg, w.now)
		if e != nil {
			w.printf("%s: rotate refused: %v", g.cfg.Region, e)
			return nil
		}
		g.event(api.EventVersionStaged, fmt.Sprintf("%s v%d", k.KeyID, next))
		if activated != 0 {
			g.event(api.EventVersionActivated, fmt.Sprintf("%s v%d", k.KeyID, activated))
		}
		for _, dst := range RotationTargets(k) {
			if err := g.startRun(k.KeyID, dst, 0, 1); err != nil {
				w.printf("%s: staged version not sent to %s: %v", g.cfg.Region, dst, err)
			}
		}
		if activated != 0 {
			g.syncReplicas(k)
		}
	case "update-primary":
		// update-primary OLD NEW
		g, err := reg(0)
		if err != nil {
			return err
		}
		k := keyAt(g)
		if k == nil {
			return nil
		}
		if e := CanChangeShared(k, g.cfg); e != nil {
			w.printf("%s: update-primary refused: %v", g.cfg.Region, e)
			return nil
		}
		var inFlight []string
		for _, o := range k.Replicas {
			if g.activeRun(o) != nil {
				inFlight = append(inFlight, o.Region)
			}
		}
		if e := HandoverReady(k, args[1], inFlight, w.now); e != nil {
			w.printf("%s: update-primary refused: %v", g.cfg.Region, e)
			return nil
		}
		BeginHandover(k, args[1], w.id("h"), w.now)
		g.event(api.EventPrimaryUpdateStarted, k.KeyID+" to "+args[1])
		g.sendHandover(k)
	case "schedule-deletion":
		g, err := reg(0)
		if err != nil {
			return err
		}
		k := keyAt(g)
		if k == nil {
			return nil
		}
		var inFlight []string
		for _, r := range k.Replicas {
			if !k.HoldsAny(r.Region) && g.activeRun(r) != nil {
				inFlight = append(inFlight, r.Region)
			}
		}
		if e := ScheduleDeletion(k, 7*24*time.Hour, inFlight, w.now); e != nil {
			w.printf("%s: schedule-deletion refused: %v", g.cfg.Region, e)
			return nil
		}
		if k.Role == ReplicaRole {
			g.event(api.EventReplicaDeletionScheduled, k.KeyID)
			g.sendStatus(k, k.PrimaryRegion, nil)
		} else {
			g.event(api.EventKeyDeletionScheduled, k.KeyID)
		}
	case "cancel-deletion":
		g, err := reg(0)
		if err != nil {
			return err
		}
		k := keyAt(g)
		if k == nil {
			return nil
		}
		if e := CancelDeletion(k, w.now); e != nil {
			w.printf("%s: cancel-deletion refused: %v", g.cfg.Region, e)
			return nil
		}
		if k.Role == ReplicaRole {
			g.event(api.EventReplicaDeletionCancelled, k.KeyID)
			g.sendStatus(k, k.PrimaryRegion, nil)
		} else {
			g.event(api.EventKeyDeletionCancelled, k.KeyID)
		}
	case "records":
		all := w.snapshot()
		for _, n := range sortedKeys(all) {
			w.printf("%s: %s", n, all[n])
		}
	default:
		return fmt.Errorf("unknown command %q", cmd)
	}
	return nil
}
