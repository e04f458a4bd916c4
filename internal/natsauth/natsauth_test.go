package natsauth

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const region = "us-east-1"

var (
	appX = App{Account: "APP_X", Users: []string{"alice", "bob"}}
	appY = App{Account: "APP_Y", Users: []string{"mallory"}}
)

func testSpec() Spec {
	s := Spec{Region: region, Apps: []App{appX, appY}, Admin: true, Passwords: map[string]string{}}
	for _, u := range s.accountUsers() {
		s.Passwords[Key(Account, u)] = "pw-" + u
	}
	for _, a := range s.Apps {
		for _, u := range a.Users {
			s.Passwords[Key(a.Account, u)] = "pw-" + a.Account + "-" + u
		}
	}
	return s
}

// testServer is a running server of one mode and a way to connect to it.
type testServer struct {
	url     string
	connect func(t *testing.T, account, user string, opts ...nats.Option) *nats.Conn
}

func passwordConnect(url string, s Spec) func(t *testing.T, account, user string, opts ...nats.Option) *nats.Conn {
	return func(t *testing.T, account, user string, opts ...nats.Option) *nats.Conn {
		t.Helper()
		opts = append(opts, nats.UserInfo(user, s.Passwords[Key(account, user)]))
		return dial(t, url, account, user, opts...)
	}
}

func dial(t *testing.T, url, account, user string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	if account == Account && user == UserProxy {
		opts = append(opts, nats.CustomInboxPrefix(ProxyInboxPrefix))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect as %s: %v", Key(account, user), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func runServer(t *testing.T, o *server.Options) string {
	t.Helper()
	o.Host, o.Port, o.NoLog, o.NoSigs = "127.0.0.1", -1, true, true
	o.JetStream, o.StoreDir = true, t.TempDir()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// startEmbedded runs a server configured with Spec.ServerOptions.
func startEmbedded(t *testing.T) testServer {
	s := testSpec()
	var o server.Options
	if err := s.ServerOptions(&o); err != nil {
		t.Fatal(err)
	}
	url := runServer(t, &o)
	return testServer{url, passwordConnect(url, s)}
}

// startConfig runs a server from a file made of Config, parsed by
// nats-server's own parser, passwords from the environment.
func startConfig(t *testing.T) testServer {
	s := testSpec()
	for k, pw := range s.Passwords {
		a, u, _ := strings.Cut(k, "/")
		t.Setenv(EnvVar(a, u), pw)
	}
	env := s
	env.Passwords = nil
	f := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(f, []byte(MustConfig(env)), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(f)
	if err != nil {
		t.Fatalf("nats-server refuses the generated config: %v\n%s", err, MustConfig(env))
	}
	url := runServer(t, o)
	return testServer{url, passwordConnect(url, s)}
}

// startJWT runs a server in operator mode from JWT.Config, users
// connecting with their .creds files.
func startJWT(t *testing.T) testServer {
	j, err := GenerateJWT(testSpec())
	if err != nil {
		t.Fatal(err)
	}
	creds, err := j.WriteCreds(filepath.Join(t.TempDir(), "creds"))
	if err != nil {
		t.Fatal(err)
	}
	for k, f := range creds {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", k, fi.Mode(), err)
		}
	}
	f := filepath.Join(t.TempDir(), "jwt.conf")
	if err := os.WriteFile(f, []byte(j.Config()), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := server.ProcessConfigFile(f)
	if err != nil {
		t.Fatalf("nats-server refuses the JWT config: %v", err)
	}
	url := runServer(t, o)
	jwtNames = j.AccountNames
	return testServer{url, func(t *testing.T, account, user string, opts ...nats.Option) *nats.Conn {
		t.Helper()
		return dial(t, url, account, user, append(opts, nats.UserCredentials(creds[Key(account, user)]))...)
	}}
}

// jwtNames maps account public keys to names in JWT mode (the principal
// in Nats-Request-Info is the key).
var jwtNames map[string]string

var modes = map[string]func(t *testing.T) testServer{
	"embedded": startEmbedded,
	"config":   startConfig,
	"jwt":      startJWT,
}

// violations collects a connection's permission violations.
type violations struct {
	mu   sync.Mutex
	errs []string
	ch   chan struct{}
}

func watch(nc *nats.Conn) *violations {
	v := &violations{ch: make(chan struct{}, 100)}
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		v.mu.Lock()
		v.errs = append(v.errs, err.Error())
		v.mu.Unlock()
		v.ch <- struct{}{}
	})
	return v
}

// expect fails t unless a permissions violation mentioning what arrives
// within a second.
func (v *violations) expect(t *testing.T, what string) {
	t.Helper()
	deadline := time.After(2 * time.Second)
	for {
		v.mu.Lock()
		for i, e := range v.errs {
			if strings.Contains(strings.ToLower(e), "permissions violation") && strings.Contains(e, what) {
				v.errs = slices.Delete(v.errs, i, i+1)
				v.mu.Unlock()
				return
			}
		}
		v.mu.Unlock()
		select {
		case <-v.ch:
		case <-deadline:
			t.Errorf("no permissions violation for %q (got %v)", what, v.errs)
			return
		}
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var regions = []string{"us-east-1", "eu-west-1"}

// setupAsWorker creates the region's resources with the worker's
// connection, as the worker does at start, and serves an API operation
// that answers with the Nats-Request-Info header it received.
func setupAsWorker(t *testing.T, ts testServer) (*nats.Conn, *layout.Region) {
	t.Helper()
	ctx := ctxT(t)
	nc := ts.connect(t, Account, UserWorker)
	v := watch(nc)
	js, _ := jetstream.New(nc)
	res, err := layout.EnsureRegion(ctx, js, region, regions, layout.Options{})
	if err != nil {
		t.Fatalf("worker: EnsureRegion: %v (violations %v)", err, v.errs)
	}
	if err := layout.EnsureProxyConsumers(ctx, js, region, regions, layout.ProxyConsumers{}); err != nil {
		t.Fatalf("worker: EnsureProxyConsumers: %v (violations %v)", err, v.errs)
	}
	if err := layout.EnsureHeartbeat(ctx, js, region, layout.Options{}); err != nil {
		t.Fatalf("worker: EnsureHeartbeat: %v", err)
	}
	if _, err := res.Keys.Put(ctx, "k1", []byte("secret key record")); err != nil {
		t.Fatalf("worker: kv put: %v", err)
	}
	if _, err := res.Keys.Get(ctx, "k1"); err != nil {
		t.Fatalf("worker: kv get: %v", err)
	}
	_, err = nc.Subscribe(layout.APISubject(region, "whoami"), func(m *nats.Msg) {
		_ = m.Respond([]byte(m.Header.Get("Nats-Request-Info")))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(v.errs) > 0 {
		t.Fatalf("worker: permission violations: %v", v.errs)
	}
	return nc, res
}

// TestLayout runs the production layout on a real server in each mode and
// checks what every user may and may not do.
func TestLayout(t *testing.T) {
	for name, start := range modes {
		t.Run(name, func(t *testing.T) {
			ts := start(t)
			setupAsWorker(t, ts)
			t.Run("proxy", func(t *testing.T) { testProxy(t, ts) })
			t.Run("app", func(t *testing.T) { testApp(t, ts) })
		})
	}
}

func testProxy(t *testing.T, ts testServer) {
	ctx := ctxT(t)
	admin := ts.connect(t, Account, UserAdmin)
	ajs, _ := jetstream.New(admin)
	msg := nats.NewMsg(layout.OutboxFilter(region, "eu-west-1")[:len(layout.OutboxFilter(region, "eu-west-1"))-1] + "init")
	msg.Data = []byte("signed message")
	if _, err := ajs.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	nc := ts.connect(t, Account, UserProxy)
	v := watch(nc)
	js, _ := jetstream.New(nc)
	// What it must do: its consumer, an inbox publish, a dead letter, a probe.
	cons, err := js.Consumer(ctx, layout.OutboxStream(region), layout.ProxyConsumer("", "eu-west-1"))
	if err != nil {
		t.Fatalf("proxy: consumer lookup: %v", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		n++
		if err := m.DoubleAck(ctx); err != nil {
			t.Errorf("proxy: ack: %v", err)
		}
	}
	if n != 1 {
		t.Errorf("proxy fetched %d messages (%v), want 1", n, batch.Error())
	}
	for _, subj := range []string{
		"mrk." + region + ".in.eu-west-1.init",
		layout.DLQSubject(region, "proxy"),
		layout.HeartbeatSubject(region, "eu-west-1"),
	} {
		if _, err := js.Publish(ctx, subj, []byte("x")); err != nil {
			t.Errorf("proxy: publish %s: %v", subj, err)
		}
	}
	if len(v.errs) > 0 {
		t.Fatalf("proxy: violations doing its job: %v", v.errs)
	}

	// What it must not do.
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 500*time.Millisecond) }
	c, cancel := short()
	if _, err := js.KeyValue(c, layout.KeysBucket(region)); err == nil {
		t.Error("proxy opened the KEYS bucket")
	}
	cancel()
	v.expect(t, "$JS.API.STREAM.INFO.KV_"+layout.KeysBucket(region))
	for _, subj := range []string{
		"$JS.API.DIRECT.GET.KV_" + layout.KeysBucket(region) + ".$KV." + layout.KeysBucket(region) + ".k1",
		"$JS.API.DIRECT.GET." + layout.OutboxStream(region),
		"$JS.API.STREAM.MSG.GET.KV_" + layout.KeysBucket(region),
		"$JS.API.STREAM.MSG.GET." + layout.OutboxStream(region),
		"$JS.API.STREAM.CREATE.SPY",
		"$JS.API.STREAM.UPDATE.KV_" + layout.KeysBucket(region),
		"$JS.API.STREAM.UPDATE." + layout.EventsStream(region),
		"$JS.API.STREAM.UPDATE." + layout.DLQStream(region),
		"$JS.API.STREAM.DELETE." + layout.OutboxStream(region),
		"$JS.API.CONSUMER.DELETE." + layout.OutboxStream(region) + "." + layout.ProxyConsumer("", "eu-west-1"),
		"$JS.API.CONSUMER.CREATE." + layout.OutboxStream(region) + ".x",
		"$JS.API.CONSUMER.DURABLE.CREATE." + layout.OutboxStream(region) + ".x",
		"$JS.API.CONSUMER.MSG.NEXT." + layout.InboxStream(region) + ".worker",
		"$JS.API.INFO",
		"$KV." + layout.KeysBucket(region) + ".k1",
		layout.APISubject(region, "schedule-key-deletion"),
		layout.RequestSubject(region, "replicate-key"),
		layout.EventSubject(region, "KeyDeleted"),
		"mrk." + region + ".out.eu-west-1.init",
	} {
		if err := nc.Publish(subj, []byte(`{"name":"SPY","subjects":["mrk.us-east-1.api.>"]}`)); err != nil {
			t.Fatal(err)
		}
		v.expect(t, subj)
	}
	for _, subj := range []string{"_INBOX.>", ">", layout.APIWildcard(region), layout.HeartbeatWildcard(region)} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		v.expect(t, subj)
	}
}

func testApp(t *testing.T, ts testServer) {
	ctx := ctxT(t)
	alice := ts.connect(t, appX.Account, "alice")
	av := watch(alice)
	spy := ts.connect(t, appY.Account, "mallory")
	sv := watch(spy)
	var seen []string
	var mu sync.Mutex
	for _, subj := range []string{">", "_INBOX.>"} {
		if _, err := spy.Subscribe(subj, func(m *nats.Msg) {
			mu.Lock()
			seen = append(seen, m.Subject+": "+string(m.Data))
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	// An admin connection in MRK watches its own _INBOX: an application
	// reply does not show there either.
	admin := ts.connect(t, Account, UserAdmin)
	adminSpy := ts.connect(t, Account, UserAdmin)
	var adminSeen []string
	if _, err := adminSpy.Subscribe("_INBOX.>", func(m *nats.Msg) {
		mu.Lock()
		adminSeen = append(adminSeen, m.Subject)
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	_ = spy.Flush()
	_ = adminSpy.Flush()

	// The principal is the server's, whatever the client writes.
	req := nats.NewMsg(layout.APISubject(region, "whoami"))
	req.Header.Set("Nats-Request-Info", `{"acc":"MRK","user":"worker"}`)
	req.Data = []byte("plaintext of alice")
	rep, err := alice.RequestMsgWithContext(ctx, req)
	if err != nil {
		t.Fatalf("alice: api call: %v", err)
	}
	var ci server.ClientInfo
	if err := json.Unmarshal(rep.Data, &ci); err != nil {
		t.Fatalf("request info %q: %v", rep.Data, err)
	}
	if n, ok := jwtNames[ci.Account]; ok { // JWT mode: a key, and the user's name_tag
		ci.Account, ci.User = n, ci.NameTag
	}
	if ci.Account != appX.Account || ci.User != "alice" {
		t.Errorf("responder saw account %q user %q, want %s alice (forged header kept?)", ci.Account, ci.User, appX.Account)
	}

	// A request event lands on the subject naming alice's account.
	if _, err := alice.Request(layout.RequestSubject(region, "replicate-key"), []byte(`{"key_id":"k1"}`), 5*time.Second); err != nil {
		t.Fatalf("alice: request event: %v", err)
	}
	// Nothing of alice's traffic reached the other application or MRK's inbox.
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	for _, s := range seen {
		t.Errorf("APP_Y saw %s", s)
	}
	for _, s := range adminSeen {
		t.Errorf("MRK's _INBOX.> saw %s", s)
	}
	mu.Unlock()
	ajs, _ := jetstream.New(admin)
	st, err := ajs.Stream(ctx, layout.RequestsStream(region))
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(ctx, layout.RequestsWildcard(region))
	if err != nil {
		t.Fatal(err)
	}
	if want := layout.RequestSubjectFor(region, "replicate-key", appX.Account); last.Subject != want {
		t.Errorf("request event stored on %s, want %s", last.Subject, want)
	}
	if op, acc, ok := layout.ParseRequestSubject(region, last.Subject); !ok || op != "replicate-key" || acc != appX.Account {
		t.Errorf("ParseRequestSubject(%s) = %q %q %v", last.Subject, op, acc, ok)
	}
	// Alice cannot make one land as another account.
	forged := layout.RequestSubjectFor(region, "replicate-key", appY.Account)
	_ = alice.Publish(forged, []byte("{}"))
	av.expect(t, forged)
	if _, err := st.GetLastMsgForSubject(ctx, forged); err == nil {
		t.Errorf("a message was stored on %s", forged)
	}

	sv.expect(t, `">"`) // "_INBOX.>" is allowed: its own account's

	// What an application may not do.
	for _, subj := range []string{
		"mrk." + region + ".out.eu-west-1.init",
		"mrk." + region + ".in.eu-west-1.init",
		layout.EventSubject(region, "KeyDeleted"),
		"$KV." + layout.KeysBucket(region) + ".k1",
		"$JS.API.INFO",
		"$JS.API.STREAM.INFO." + layout.RequestsStream(region),
		"$JS.API.DIRECT.GET." + layout.RequestsStream(region),
		layout.DLQSubject(region, "worker"),
		"$SRV.PING",
	} {
		_ = alice.Publish(subj, []byte("x"))
		av.expect(t, subj)
	}
	if _, err := alice.SubscribeSync(layout.APIWildcard(region)); err != nil {
		t.Fatal(err)
	}
	av.expect(t, layout.APIWildcard(region))
	// It reads events, live.
	sub, err := alice.SubscribeSync(layout.EventsWildcard(region))
	if err != nil {
		t.Fatal(err)
	}
	_ = alice.Flush()
	wjs := ts.connect(t, Account, UserWorker)
	if err := wjs.Publish(layout.EventSubject(region, "KeyCreated"), []byte("event")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "event" {
		t.Errorf("application did not receive the event: %v", err)
	}
}

// TestDocShowsConfig keeps docs/NATS.md's example equal to the generator.
func TestDocShowsConfig(t *testing.T) {
	doc, err := os.ReadFile("../../docs/NATS.md")
	if err != nil {
		t.Fatal(err)
	}
	want := MustConfig(Spec{Region: "us-east-1", Apps: []App{DefaultApp}})
	if !strings.Contains(string(doc), want) {
		t.Errorf("docs/NATS.md does not contain the current Config for us-east-1:\n%s", want)
	}
}

func TestAppCannotTouchProtocol(t *testing.T) {
	p := AppPermissions("us-east-1")
	for _, s := range p.Publish.Allow {
		if strings.Contains(s, ".out.") || strings.Contains(s, ".in.") || strings.HasPrefix(s, "$") || strings.HasSuffix(s, ">") && strings.Contains(s, "requests") {
			t.Errorf("client may publish to %s", s)
		}
	}
}

func TestWorkerHasNoWholeAPI(t *testing.T) {
	for _, p := range []*server.Permissions{WorkerPermissions(region), ProxyPermissions(region)} {
		for _, s := range p.Publish.Allow {
			if s == "$JS.API.>" || s == ">" || s == "$JS.>" || strings.HasPrefix(s, "$JS.API.STREAM.DELETE") {
				t.Errorf("grant %s", s)
			}
		}
	}
}
