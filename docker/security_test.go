package docker_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/internal/config"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
)

// secretOf names the compose secret holding each user's password.
var secretOf = map[string]string{
	natsauth.Key(natsauth.Account, natsauth.UserWorker):                     "nats_worker_password",
	natsauth.Key(natsauth.Account, natsauth.UserProxy):                      "nats_proxy_password",
	natsauth.Key(natsauth.Account, natsauth.UserAdmin):                      "nats_admin_password",
	natsauth.Key(natsauth.DefaultApp.Account, natsauth.DefaultApp.Users[0]): "nats_app_password",
}

// TestComposeSecure checks that the compose deployment runs the production
// layout, secure by default: every NATS server gets every password of
// docker/nats/*.conf from the environment, required (no default: compose
// refuses to start without docker/.env); every secret file is made from
// the user's variable; the workers and the proxies connect as their users
// with their secret; the workers decide by the region policy of
// config/region-policy.json (APP_DEMO may create and list keys), with the
// admin named; only the one-shot bootstrap containers write the bundle,
// everyone else mounts it read-only; the tools connect as the app user.
func TestComposeSecure(t *testing.T) {
	c := readCompose(t)
	if len(secretOf) != len(dockerUsers()) {
		t.Fatalf("secretOf names %d users, the configs have %d", len(secretOf), len(dockerUsers()))
	}
	for _, k := range dockerUsers() {
		account, user, _ := strings.Cut(k, "/")
		sec, ok := c.Secrets[secretOf[k]]
		if !ok || sec.Environment != natsauth.EnvVar(account, user) || sec.File != "" {
			t.Errorf("secret %s of %s: %+v, want it made from %s", secretOf[k], k, sec, natsauth.EnvVar(account, user))
		}
	}
	required := func(v string) *regexp.Regexp {
		return regexp.MustCompile(`^\$\{` + v + `:\?[^}]+\}$`)
	}
	for name, s := range c.Services {
		if strings.HasPrefix(name, "nats-") && name != "nats-box" {
			for _, v := range passwordVars() {
				if !required(v).MatchString(s.Environment[v]) {
					t.Errorf("%s: %s = %q, want ${%s:?…} (required, no default)", name, v, s.Environment[v], v)
				}
			}
		}
		for _, vol := range s.Volumes {
			src, dst := mount(vol)
			if src != "bundle" {
				continue
			}
			ro := strings.HasSuffix(vol, ":ro")
			if strings.HasPrefix(name, "bootstrap-") == ro || dst != "/var/lib/mrkrepl/bundle" {
				t.Errorf("%s mounts %q: only the bootstrap containers may write the bundle", name, vol)
			}
		}
	}

	// mrkrepl refuses a secret file readable by others (and compose's
	// default mode is 0444): every secret of the image's services is
	// mode 0400 and owned by the image's user.
	for name, s := range c.Services {
		for _, sec := range s.Secrets {
			if strings.HasPrefix(name, "nats-box") {
				continue
			}
			if sec.Mode == nil || *sec.Mode != 0o400 || sec.UID != "10001" || sec.GID != "10001" {
				t.Errorf("%s: secret %s: uid %q gid %q mode %v, want 10001, 10001, 0400", name, sec.Source, sec.UID, sec.GID, sec.Mode)
			}
		}
		for _, vol := range s.Volumes {
			if src, _ := mount(vol); src == "bundle-root" && !strings.HasPrefix(name, "bootstrap-") {
				t.Errorf("%s mounts the root key volume: only the bootstrap containers may", name)
			}
		}
	}

	workerCfg := config.DefaultWorker()
	if err := config.Load("config/worker.yaml", &workerCfg); err != nil {
		t.Fatal(err)
	}
	if workerCfg.NATS.User != natsauth.UserWorker || workerCfg.NATS.PasswordFile != "/run/secrets/nats_worker_password" {
		t.Errorf("config/worker.yaml: nats user %q, password_file %q", workerCfg.NATS.User, workerCfg.NATS.PasswordFile)
	}
	if !slices.Contains(workerCfg.Authz.Admins, "MRK/admin") || workerCfg.Authz.LocalPrincipal != "MRK/admin" {
		t.Errorf("config/worker.yaml: admins %v, local_principal %q, want MRK/admin", workerCfg.Authz.Admins, workerCfg.Authz.LocalPrincipal)
	}
	proxyCfg := config.DefaultProxy()
	if err := config.Load("config/proxy.yaml", &proxyCfg); err != nil {
		t.Fatal(err)
	}
	if proxyCfg.NATS.User != natsauth.UserProxy || proxyCfg.NATS.PasswordFile != "/run/secrets/nats_proxy_password" {
		t.Errorf("config/proxy.yaml: nats user %q, password_file %q", proxyCfg.NATS.User, proxyCfg.NATS.PasswordFile)
	}

	for _, r := range regions {
		w := c.Services["worker-"+r]
		if !slices.Contains(w.Secrets.names(), "nats_worker_password") {
			t.Errorf("worker-%s: secrets %v", r, w.Secrets)
		}
		if !slices.Contains(w.Volumes, "./config/region-policy.json:"+workerCfg.Authz.RegionPolicyFile+":ro") {
			t.Errorf("worker-%s does not mount config/region-policy.json at %q", r, workerCfg.Authz.RegionPolicyFile)
		}
		var deps map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := w.DependsOn.Decode(&deps); err != nil || deps["bootstrap-"+r].Condition != "service_completed_successfully" {
			t.Errorf("worker-%s does not wait for bootstrap-%s to complete: %v %v", r, r, deps, err)
		}
		b, ok := c.Services["bootstrap-"+r]
		switch {
		case !ok:
			t.Errorf("no service bootstrap-%s", r)
		case !slices.Equal(b.Command, []string{"bootstrap"}) || b.NetworkMode != "none" || len(b.Secrets) != 0:
			t.Errorf("bootstrap-%s: command %v, network_mode %q, secrets %v: want bootstrap, none, none", r, b.Command, b.NetworkMode, b.Secrets)
		case b.Environment["MRKREPL_HSM"] != w.Environment["MRKREPL_HSM"] || b.Environment["MRKREPL_REGION"] != r || !slices.Contains(b.Volumes, "tokens-"+r+":/var/lib/mrkrepl/tokens"):
			t.Errorf("bootstrap-%s does not bootstrap the token of worker-%s", r, r)
		}
	}
	for name, s := range c.Services {
		if strings.HasPrefix(name, "proxy-") && !slices.Equal(s.Secrets.names(), []string{"nats_proxy_password"}) {
			t.Errorf("%s: secrets %v, want nats_proxy_password", name, s.Secrets)
		}
	}
	app := natsauth.DefaultApp.Users[0]
	if e := c.Services["nats-box"].Environment; e["NATS_USER"] != app || !required(natsauth.EnvVar(natsauth.DefaultApp.Account, app)).MatchString(e["NATS_PASSWORD"]) {
		t.Errorf("nats-box does not connect as %s: %v", app, e)
	}
	if s := c.Services["mrkrepl"]; s.Environment["MRKREPL_NATS_USER"] != app || s.Environment["MRKREPL_NATS_PASSWORD_FILE"] != "/run/secrets/nats_app_password" ||
		!slices.Contains(s.Secrets.names(), "nats_app_password") || !slices.Contains(s.Secrets.names(), "nats_admin_password") {
		t.Errorf("the mrkrepl tool does not connect as %s, or lacks the admin's secret: %+v", app, s)
	}

	// The region policy: the admin may do everything, APP_DEMO's users
	// create and list keys, nobody else anything.
	doc, err := os.ReadFile("config/region-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authz.Parse(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		who, action string
		allowed     bool
	}{
		{"MRK/admin", "kms:CreateKey", true},
		{"MRK/admin", "kms:ListKeys", true},
		{natsauth.Key(natsauth.DefaultApp.Account, app), "kms:CreateKey", true},
		{natsauth.Key(natsauth.DefaultApp.Account, app), "kms:ListKeys", true},
		{natsauth.Key(natsauth.DefaultApp.Account, app), "kms:Decrypt", false},
		{"MRK/worker", "kms:CreateKey", false},
		{"APP_OTHER/app", "kms:CreateKey", false},
	} {
		p, err := authz.ParsePrincipal(tc.who)
		if err != nil {
			t.Fatal(err)
		}
		if d := pol.Evaluate(authz.Request{Principal: p, Action: tc.action}); d.Allowed != tc.allowed {
			t.Errorf("region policy: %s %s: allowed %v (%s), want %v", tc.who, tc.action, d.Allowed, d.Reason, tc.allowed)
		}
	}
}

// TestGitignoreEnv checks that the passwords file stays out of git.
func TestGitignoreEnv(t *testing.T) {
	b, err := os.ReadFile("../.gitignore")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(b), "\n"), "/docker/.env") {
		t.Error(".gitignore does not ignore /docker/.env")
	}
}
