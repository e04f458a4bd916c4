package natsauth

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// SystemAccount is the name of the system account of JWT mode.
const SystemAccount = "SYS"

// JWT is a Spec in operator/JWT mode: one operator per region's cluster
// (so a credential of one region is worth nothing on another), the same
// accounts, users, exports and imports as Config, as signed JWTs. Exports
// of Account are private (token_req): each application's import carries
// an activation token signed by Account, for its own subjects only, so
// that no other account can import them, even one the operator signs
// later.
type JWT struct {
	Region      string
	OperatorJWT string
	// Accounts maps each account's name (Account, SystemAccount and the
	// applications) to its public key; AccountNames is the inverse.
	Accounts     map[string]string
	AccountNames map[string]string
	// AccountJWTs maps public keys to account JWTs (resolver_preload).
	AccountJWTs map[string]string
	// Creds maps Key(account, user) to the user's .creds file contents
	// (user JWT and seed: secret).
	Creds map[string][]byte
	// Seeds maps the operator ("operator") and account names to their
	// seeds (secret), to sign more users or accounts later.
	Seeds map[string][]byte
}

// GenerateJWT creates fresh keys for s's operator, accounts and users and
// signs their JWTs. Passwords in s are ignored.
func GenerateJWT(s Spec) (*JWT, error) {
	if err := s.Check(); err != nil {
		return nil, err
	}
	r := s.Region
	j := &JWT{Region: r, Accounts: map[string]string{}, AccountNames: map[string]string{}, AccountJWTs: map[string]string{}, Creds: map[string][]byte{}, Seeds: map[string][]byte{}}
	okp, err := nkeys.CreateOperator()
	if err != nil {
		return nil, err
	}
	opub, _ := okp.PublicKey()
	j.Seeds["operator"], _ = okp.Seed()
	keys := map[string]nkeys.KeyPair{}
	for _, name := range append([]string{Account, SystemAccount}, s.appNames()...) {
		kp, err := nkeys.CreateAccount()
		if err != nil {
			return nil, err
		}
		pub, _ := kp.PublicKey()
		keys[name] = kp
		j.Accounts[name], j.AccountNames[pub] = pub, name
		j.Seeds[name], _ = kp.Seed()
	}
	oc := jwt.NewOperatorClaims(opub)
	oc.Name = "mrkrepl-" + r
	oc.SystemAccount = j.Accounts[SystemAccount]
	if j.OperatorJWT, err = oc.Encode(okp); err != nil {
		return nil, fmt.Errorf("natsauth: operator jwt: %w", err)
	}

	mrk := jwt.NewAccountClaims(j.Accounts[Account])
	mrk.Name = Account
	mrk.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit, Consumer: jwt.NoLimit, MaxAckPending: jwt.NoLimit}
	if len(s.Apps) > 0 {
		mrk.Exports.Add(&jwt.Export{Name: "api", Subject: jwt.Subject(layout.APIWildcard(r)), Type: jwt.Service, ResponseType: jwt.ResponseTypeSingleton, TokenReq: true})
		mrk.Exports.Add(&jwt.Export{Name: "events", Subject: jwt.Subject(layout.EventsWildcard(r)), Type: jwt.Stream, TokenReq: true})
		for _, a := range s.Apps {
			mrk.Exports.Add(&jwt.Export{Name: "requests " + a.Account, Subject: jwt.Subject(appRequests(r, a.Account)), Type: jwt.Service, TokenReq: true})
		}
	}
	sys := jwt.NewAccountClaims(j.Accounts[SystemAccount])
	sys.Name = SystemAccount
	sys.Exports = jwt.Exports{
		&jwt.Export{Name: "account-monitoring-services", Subject: "$SYS.REQ.ACCOUNT.*.*", Type: jwt.Service, ResponseType: jwt.ResponseTypeStream, AccountTokenPosition: 4},
		&jwt.Export{Name: "account-monitoring-streams", Subject: "$SYS.ACCOUNT.*.>", Type: jwt.Stream, AccountTokenPosition: 3},
	}
	claims := map[string]*jwt.AccountClaims{Account: mrk, SystemAccount: sys}
	for _, a := range s.Apps {
		ac := jwt.NewAccountClaims(j.Accounts[a.Account])
		ac.Name = a.Account
		activation := func(subject string, typ jwt.ExportType) (string, error) {
			act := jwt.NewActivationClaims(j.Accounts[a.Account])
			act.ImportSubject, act.ImportType = jwt.Subject(subject), typ
			return act.Encode(keys[Account])
		}
		for _, im := range []*jwt.Import{
			{Name: "api", Account: j.Accounts[Account], Subject: jwt.Subject(layout.APIWildcard(r)), Type: jwt.Service, Share: true},
			{Name: "requests", Account: j.Accounts[Account], Subject: jwt.Subject(appRequests(r, a.Account)), LocalSubject: jwt.RenamingSubject(layout.RequestSubject(r, "*")), Type: jwt.Service},
			{Name: "events", Account: j.Accounts[Account], Subject: jwt.Subject(layout.EventsWildcard(r)), Type: jwt.Stream},
		} {
			if im.Token, err = activation(string(im.Subject), im.Type); err != nil {
				return nil, fmt.Errorf("natsauth: activation for %s: %w", a.Account, err)
			}
			ac.Imports.Add(im)
		}
		claims[a.Account] = ac
	}
	for name, ac := range claims {
		var vr jwt.ValidationResults
		ac.Validate(&vr)
		if vr.IsBlocking(true) {
			return nil, fmt.Errorf("natsauth: account %s: %v", name, vr.Errors())
		}
		tok, err := ac.Encode(okp)
		if err != nil {
			return nil, fmt.Errorf("natsauth: account %s: %w", name, err)
		}
		j.AccountJWTs[j.Accounts[name]] = tok
	}

	users := map[string][]string{Account: s.accountUsers()}
	for _, a := range s.Apps {
		users[a.Account] = a.Users
	}
	for account, names := range users {
		for _, u := range names {
			ukp, err := nkeys.CreateUser()
			if err != nil {
				return nil, err
			}
			upub, _ := ukp.PublicKey()
			useed, _ := ukp.Seed()
			uc := jwt.NewUserClaims(upub)
			uc.Name = u
			uc.IssuerAccount = "" // signed by the account's own key
			uc.Tags.Add("account:"+strings.ToLower(account), "region:"+r)
			if p := permissionsOf(account, u, r); p != nil {
				uc.Pub.Allow.Add(p.Publish.Allow...)
				uc.Sub.Allow.Add(p.Subscribe.Allow...)
				if p.Response != nil {
					uc.Resp = &jwt.ResponsePermission{MaxMsgs: p.Response.MaxMsgs, Expires: p.Response.Expires}
				}
			}
			tok, err := uc.Encode(keys[account])
			if err != nil {
				return nil, fmt.Errorf("natsauth: user %s: %w", Key(account, u), err)
			}
			creds, err := jwt.FormatUserConfig(tok, useed)
			if err != nil {
				return nil, err
			}
			j.Creds[Key(account, u)] = creds
		}
	}
	return j, nil
}

// Config returns the server configuration of JWT mode: the operator, the
// system account and a MEMORY resolver preloaded with every account JWT.
func (j *JWT) Config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# mrkrepl operator and accounts of region %s (generated by internal/natsauth; docs/NATS.md)\n", j.Region)
	// The worker's user JWT, with every stream's API subject by name,
	// is ~10 KB; the client sends it in CONNECT, a control line.
	b.WriteString("max_control_line: 65536\n")
	fmt.Fprintf(&b, "operator: %s\n", j.OperatorJWT)
	fmt.Fprintf(&b, "system_account: %s\n", j.Accounts[SystemAccount])
	b.WriteString("resolver: MEMORY\nresolver_preload: {\n")
	var names []string
	for n := range j.Accounts {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&b, "  # %s\n  %s: %s\n", n, j.Accounts[n], j.AccountJWTs[j.Accounts[n]])
	}
	b.WriteString("}\n")
	return b.String()
}

// ServerOptions sets o to JWT mode (what nats-server makes of Config).
func (j *JWT) ServerOptions(o *server.Options) error {
	return o.ProcessConfigString(j.Config())
}

// WriteCreds writes every user's .creds file (mode 0600) into dir as
// <ACCOUNT>-<user>.creds and returns their paths by Key(account, user).
func (j *JWT) WriteCreds(dir string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	paths := map[string]string{}
	for k, c := range j.Creds {
		f := filepath.Join(dir, strings.ReplaceAll(k, "/", "-")+".creds")
		if err := os.WriteFile(f, c, 0o600); err != nil {
			return nil, err
		}
		paths[k] = f
	}
	return paths, nil
}
