// Package natsauth defines the NATS accounts, users and permissions of a
// region's cluster (docs/NATS.md), in one place, for every way of running
// a server:
//
//   - Config: the text of an "accounts" block for nats-server's
//     configuration file (static users, passwords from environment
//     variables or bcrypt hashes);
//   - Spec.ServerOptions: the same accounts, users, exports and imports
//     built programmatically for an embedded server (mrkrepltest);
//   - GenerateJWT: the same again in operator/JWT mode (operator, account
//     and user JWTs, a MEMORY resolver preload and .creds files).
//
// The layout, per region r:
//
//   - account MRK (JetStream): users worker (its region's streams, buckets
//     and consumers, enumerated by name; the API it serves), proxy (only its
//     consumers on the outbox, publishing into the inbox, its dead letters
//     and heartbeats, replies on a private inbox prefix) and optionally
//     admin (unrestricted within MRK);
//   - one account per client application (no JetStream) that imports the
//     API service mrk.r.api.> with share (so the worker receives the
//     server-stamped Nats-Request-Info header naming the caller's account
//     and user), the events mrk.r.events.> as a stream, and its own request
//     subject mrk.r.requests.* mapped to mrk.r.requests.*.<ACCOUNT> in MRK.
//
// Replies to an application stay in its account: a service import maps
// each reply subject to a private one, so no other account sees it.
package natsauth

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/nats-server/v2/server"
)

// Account is the region's own account: JetStream, workers, proxy, admin.
const Account = "MRK"

// Users of Account.
const (
	UserWorker = "worker"
	UserProxy  = "proxy"
	UserAdmin  = "admin"
)

// Legacy role names (the users of Account).
const (
	RoleWorker = UserWorker
	RoleProxy  = UserProxy
)

// ProxyInboxPrefix is the inbox prefix of the proxy's connections
// (nats.CustomInboxPrefix): the proxy may subscribe under it only, so it
// can read neither the workers' replies nor anyone else's.
const ProxyInboxPrefix = "_INBOX_proxy"

// DefaultApp is the application account of the demo, docker/ and docs.
var DefaultApp = App{Account: "APP_DEMO", Users: []string{"app"}}

// App is a client application account and its users.
type App struct {
	Account string   // upper-case letters, digits and '_', not MRK
	Users   []string // letters, digits, '-' and '_'
}

// Spec is the authorization layout of one region's cluster.
type Spec struct {
	Region string
	Apps   []App
	// Admin adds the admin user to Account.
	Admin bool
	// Passwords replaces the environment variable of a user's password
	// in Config, by "ACCOUNT/user" (e.g. a bcrypt hash, or a literal in
	// tests). ServerOptions takes every password from here.
	Passwords map[string]string
}

var (
	accountRE = regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	userRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)
)

// Check reports a malformed spec.
func (s Spec) Check() error {
	if s.Region == "" || strings.ContainsAny(s.Region, ".*> ") {
		return fmt.Errorf("natsauth: bad region %q", s.Region)
	}
	seen := map[string]bool{Account: true, "$SYS": true, "$G": true, "SYS": true}
	for _, a := range s.Apps {
		if !accountRE.MatchString(a.Account) || seen[a.Account] {
			return fmt.Errorf("natsauth: bad or duplicate application account %q", a.Account)
		}
		seen[a.Account] = true
		if len(a.Users) == 0 {
			return fmt.Errorf("natsauth: account %s has no user", a.Account)
		}
		for _, u := range a.Users {
			if !userRE.MatchString(u) {
				return fmt.Errorf("natsauth: account %s: bad user %q", a.Account, u)
			}
		}
	}
	return nil
}

// Key names a user in Spec.Passwords and elsewhere: "ACCOUNT/user".
func Key(account, user string) string { return account + "/" + user }

// EnvVar is the environment variable Config reads a user's password from:
// MRKREPL_NATS_<USER>_PASSWORD for the users of Account (as before
// accounts), MRKREPL_NATS_<ACCOUNT>_<USER>_PASSWORD for applications.
func EnvVar(account, user string) string {
	u := strings.ToUpper(strings.ReplaceAll(user, "-", "_"))
	if account == Account {
		return "MRKREPL_NATS_" + u + "_PASSWORD"
	}
	return "MRKREPL_NATS_" + account + "_" + u + "_PASSWORD"
}

// WorkerPermissions are the worker's: the JetStream API of its region's
// streams and buckets only (by name), publishing to the subjects of the
// streams it writes, serving the API; its own inbox for replies.
func WorkerPermissions(region string) *server.Permissions {
	pub := []string{"$JS.API.INFO"}
	for _, st := range layout.Streams(region) {
		pub = append(pub,
			"$JS.API.STREAM.CREATE."+st,
			"$JS.API.STREAM.UPDATE."+st,
			"$JS.API.STREAM.INFO."+st,
			"$JS.API.STREAM.PURGE."+st, // KV PurgeDeletes
			"$JS.API.STREAM.MSG.GET."+st,
			"$JS.API.DIRECT.GET."+st,
			"$JS.API.DIRECT.GET."+st+".>",
			"$JS.API.CONSUMER.*."+st+".>", // CREATE, INFO, DELETE of a named consumer
			"$JS.API.CONSUMER.DURABLE.CREATE."+st+".>",
			"$JS.API.CONSUMER.MSG.NEXT."+st+".>",
			"$JS.ACK."+st+".>",
			"$JS.FC."+st+".>",
		)
	}
	for _, b := range layout.Buckets(region) {
		pub = append(pub, "$KV."+b+".>")
	}
	pub = append(pub,
		layout.OutboxWildcard(region),
		layout.EventsWildcard(region),
		layout.DLQWildcard(region),
		"$SRV.>",
	)
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{
			layout.APIWildcard(region), "$SRV.>", "_INBOX.>",
		}},
		// Replies to API calls (through the application's import) and
		// to the service discovery's $SRV requests: one per request.
		Response: &server.ResponsePermission{MaxMsgs: 1},
	}
}

// ProxyPermissions are the proxy's: look up and pull from the consumers of
// region's outbox and ack their messages; publish into the inbox, the
// proxy's dead letters and the heartbeat probes; replies on
// ProxyInboxPrefix. No stream or consumer management, no message or
// direct get, no KV, no API, no other inbox.
func ProxyPermissions(region string) *server.Permissions {
	out := layout.OutboxStream(region)
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			"$JS.API.CONSUMER.INFO." + out + ".*",
			"$JS.API.CONSUMER.MSG.NEXT." + out + ".*",
			"$JS.ACK." + out + ".>",
			layout.InboxWildcard(region),
			layout.DLQSubject(region, "proxy"),
			layout.HeartbeatWildcard(region),
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{ProxyInboxPrefix + ".>"}},
	}
}

// AppPermissions are an application user's, inside its own account: call
// the API, publish request events, read events, receive its replies (its
// account's _INBOX, which no other account shares).
func AppPermissions(region string) *server.Permissions {
	return &server.Permissions{
		Publish: &server.SubjectPermission{Allow: []string{
			layout.APIWildcard(region), layout.RequestSubject(region, "*"),
		}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>", layout.EventsWildcard(region)}},
	}
}

// appRequests is the subject of account's request events in Account.
func appRequests(region, account string) string {
	return layout.RequestSubjectFor(region, "*", account)
}

// accountUsers returns the users of Account in s.
func (s Spec) accountUsers() []string {
	u := []string{UserWorker, UserProxy}
	if s.Admin {
		u = append(u, UserAdmin)
	}
	return u
}

func permissionsOf(account, user, region string) *server.Permissions {
	if account != Account {
		return AppPermissions(region)
	}
	switch user {
	case UserWorker:
		return WorkerPermissions(region)
	case UserProxy:
		return ProxyPermissions(region)
	}
	return nil // admin
}

// Config returns the "accounts" block of s for a nats-server configuration
// file (to include). A user's password is Spec.Passwords[Key(account,
// user)] if set (a bcrypt hash in production), else the environment
// variable EnvVar(account, user), which the server reads at start.
func Config(s Spec) (string, error) {
	if err := s.Check(); err != nil {
		return "", err
	}
	r := s.Region
	var b strings.Builder
	fmt.Fprintf(&b, "# mrkrepl accounts of region %s (generated by internal/natsauth; docs/NATS.md)\n", r)
	b.WriteString("accounts {\n")
	fmt.Fprintf(&b, "  %s {\n    jetstream: enabled\n    users: [\n", Account)
	for _, u := range s.accountUsers() {
		writeUser(&b, s, Account, u)
	}
	b.WriteString("    ]\n    exports: [\n")
	apps := s.appNames()
	if len(apps) > 0 {
		fmt.Fprintf(&b, "      { service: %q, response: singleton, accounts: %s }\n", layout.APIWildcard(r), list(apps))
		for _, a := range apps {
			fmt.Fprintf(&b, "      { service: %q, accounts: %s }\n", appRequests(r, a), list([]string{a}))
		}
		fmt.Fprintf(&b, "      { stream: %q, accounts: %s }\n", layout.EventsWildcard(r), list(apps))
	}
	b.WriteString("    ]\n  }\n")
	for _, a := range s.Apps {
		fmt.Fprintf(&b, "  %s {\n    users: [\n", a.Account)
		for _, u := range a.Users {
			writeUser(&b, s, a.Account, u)
		}
		b.WriteString("    ]\n    imports: [\n")
		fmt.Fprintf(&b, "      { service: { account: %s, subject: %q }, share: true }\n", Account, layout.APIWildcard(r))
		fmt.Fprintf(&b, "      { service: { account: %s, subject: %q }, to: %q }\n", Account, appRequests(r, a.Account), layout.RequestSubject(r, "*"))
		fmt.Fprintf(&b, "      { stream: { account: %s, subject: %q } }\n", Account, layout.EventsWildcard(r))
		b.WriteString("    ]\n  }\n")
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// MustConfig is Config for specs known to be well formed.
func MustConfig(s Spec) string {
	c, err := Config(s)
	if err != nil {
		panic(err)
	}
	return c
}

func (s Spec) appNames() []string {
	var n []string
	for _, a := range s.Apps {
		n = append(n, a.Account)
	}
	return n
}

func writeUser(b *strings.Builder, s Spec, account, user string) {
	pw, ok := s.Passwords[Key(account, user)]
	if ok {
		pw = fmt.Sprintf("%q", pw)
	} else {
		pw = "$" + EnvVar(account, user)
	}
	fmt.Fprintf(b, "      {\n        user: %s\n        password: %s\n", user, pw)
	if p := permissionsOf(account, user, s.Region); p != nil {
		b.WriteString("        permissions: {\n")
		fmt.Fprintf(b, "          publish: { allow: %s }\n", list(p.Publish.Allow))
		fmt.Fprintf(b, "          subscribe: { allow: %s }\n", list(p.Subscribe.Allow))
		if p.Response != nil {
			fmt.Fprintf(b, "          allow_responses: { max: %d }\n", p.Response.MaxMsgs)
		}
		b.WriteString("        }\n")
	}
	b.WriteString("      }\n")
}

func list(subjects []string) string {
	q := make([]string, len(subjects))
	for i, s := range subjects {
		q[i] = `"` + s + `"`
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// ServerOptions sets o.Accounts and o.Users to s's layout, built
// programmatically (for embedded servers), with every password from
// s.Passwords. It builds what nats-server makes of Config(s) (the tests
// check both against the same refusals).
func (s Spec) ServerOptions(o *server.Options) error {
	if err := s.Check(); err != nil {
		return err
	}
	r := s.Region
	mrk, err := jetStreamAccount(Account)
	if err != nil {
		return err
	}
	accs := []*server.Account{mrk}
	var apps []*server.Account
	for _, a := range s.Apps {
		apps = append(apps, server.NewAccount(a.Account))
	}
	if len(apps) > 0 {
		if err := mrk.AddServiceExportWithResponse(layout.APIWildcard(r), server.Singleton, apps); err != nil {
			return fmt.Errorf("natsauth: export api: %w", err)
		}
		for _, a := range apps {
			if err := mrk.AddServiceExport(appRequests(r, a.Name), []*server.Account{a}); err != nil {
				return fmt.Errorf("natsauth: export requests to %s: %w", a.Name, err)
			}
		}
		if err := mrk.AddStreamExport(layout.EventsWildcard(r), apps); err != nil {
			return fmt.Errorf("natsauth: export events: %w", err)
		}
	}
	for _, a := range apps {
		if err := a.AddServiceImport(mrk, layout.APIWildcard(r), layout.APIWildcard(r)); err != nil {
			return fmt.Errorf("natsauth: %s: import api: %w", a.Name, err)
		}
		if err := a.SetServiceImportSharing(mrk, layout.APIWildcard(r), true); err != nil {
			return fmt.Errorf("natsauth: %s: share api import: %w", a.Name, err)
		}
		if err := a.AddServiceImport(mrk, layout.RequestSubject(r, "*"), appRequests(r, a.Name)); err != nil {
			return fmt.Errorf("natsauth: %s: import requests: %w", a.Name, err)
		}
		if err := a.AddStreamImport(mrk, layout.EventsWildcard(r), ""); err != nil {
			return fmt.Errorf("natsauth: %s: import events: %w", a.Name, err)
		}
		accs = append(accs, a)
	}
	var users []*server.User
	for _, u := range s.accountUsers() {
		users = append(users, &server.User{Username: u, Password: s.Passwords[Key(Account, u)], Account: mrk, Permissions: permissionsOf(Account, u, r)})
	}
	for i, a := range s.Apps {
		for _, u := range a.Users {
			users = append(users, &server.User{Username: u, Password: s.Passwords[Key(a.Account, u)], Account: apps[i], Permissions: AppPermissions(r)})
		}
	}
	for _, u := range users {
		if u.Password == "" {
			return fmt.Errorf("natsauth: no password for %s", Key(u.Account.Name, u.Username))
		}
	}
	o.Accounts = accs
	o.Users = users
	return nil
}

// jetStreamAccount returns a new account with JetStream enabled (dynamic
// limits). nats-server has no exported way to mark an account for
// JetStream before the server starts but its configuration parser, so the
// one line "jetstream: enabled" is parsed.
func jetStreamAccount(name string) (*server.Account, error) {
	var o server.Options
	if err := o.ProcessConfigString("accounts { " + name + " { jetstream: enabled } }"); err != nil {
		return nil, fmt.Errorf("natsauth: account %s: %w", name, err)
	}
	i := slices.IndexFunc(o.Accounts, func(a *server.Account) bool { return a.Name == name })
	if i < 0 {
		return nil, fmt.Errorf("natsauth: account %s not parsed", name)
	}
	return o.Accounts[i], nil
}
