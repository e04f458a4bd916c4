package docker_test

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/nats-io/nats-server/v2/server"
)

// update rewrites the generated files of docker/ (nats/*.conf):
//
//	go test ./docker/ -run TestNATSConfigs -update
var update = flag.Bool("update", false, "rewrite docker/nats/*.conf from internal/natsauth")

// nodes are the servers of each region's cluster.
var nodes = []string{"a", "b", "c"}

// dockerSpec is the NATS layout of a region of the compose deployment:
// the workers' account MRK with worker, proxy and admin, and the
// application account APP_DEMO with user app; every password from its
// environment variable (natsauth.EnvVar).
func dockerSpec(region string) natsauth.Spec {
	return natsauth.Spec{Region: region, Apps: []natsauth.App{natsauth.DefaultApp}, Admin: true}
}

// dockerUsers returns "ACCOUNT/user" of every user of dockerSpec.
func dockerUsers() []string {
	u := []string{
		natsauth.Key(natsauth.Account, natsauth.UserWorker),
		natsauth.Key(natsauth.Account, natsauth.UserProxy),
		natsauth.Key(natsauth.Account, natsauth.UserAdmin),
	}
	for _, a := range dockerSpec(regions[0]).Apps {
		for _, n := range a.Users {
			u = append(u, natsauth.Key(a.Account, n))
		}
	}
	return u
}

// passwordVars returns the environment variable of every user's password.
func passwordVars() []string {
	var v []string
	for _, k := range dockerUsers() {
		account, user, _ := strings.Cut(k, "/")
		v = append(v, natsauth.EnvVar(account, user))
	}
	return v
}

// nodeConf is the whole configuration file of server node (a, b, c) of
// region: its cluster, and the accounts natsauth.Config renders.
func nodeConf(region, node string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# Region %[1]s, node %[2]s: one of the three servers of the region's own
# NATS JetStream cluster (docker/compose.yaml runs it as nats-%[1]s-%[2]s).
#
# GENERATED, do not edit: go test ./docker/ -run TestNATSConfigs -update
# writes it from internal/natsauth (docs/NATS.md), and the test fails when
# it differs. The passwords are read from the environment when the server
# starts (compose sets them from docker/.env, see docker/README.md); a
# missing one stops the server.
server_name: %[1]s-%[2]s
port: 4222
http_port: 8222

jetstream {
  store_dir: /data
  max_memory_store: 256MB
  max_file_store: 4GB
}

cluster {
  name: %[1]s
  port: 6222
  routes: [
`, region, node)
	for _, n := range nodes {
		fmt.Fprintf(&b, "    nats-route://nats-%s-%s:6222\n", region, n)
	}
	b.WriteString("  ]\n}\n\n")
	b.WriteString(natsauth.MustConfig(dockerSpec(region)))
	return b.String()
}

// runPasswords runs passwords.sh into a new file and returns what it wrote.
func runPasswords(t *testing.T) (path string, env map[string]string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), ".env")
	if out, err := exec.Command("sh", "passwords.sh", path).CombinedOutput(); err != nil {
		t.Fatalf("passwords.sh: %v\n%s", err, out)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env = map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("passwords.sh wrote %q", line)
		}
		env[k] = v
	}
	return path, env
}

// TestPasswords checks docker/passwords.sh: a password for every user of
// the NATS configs, all different, in a file only its owner reads, and a
// second run does not overwrite it.
func TestPasswords(t *testing.T) {
	path, env := runPasswords(t)
	got := slices.Sorted(func(yield func(string) bool) {
		for k := range env {
			if !yield(k) {
				return
			}
		}
	})
	if want := slices.Sorted(slices.Values(passwordVars())); !slices.Equal(got, want) {
		t.Errorf("passwords.sh writes %v, want %v", got, want)
	}
	seen := map[string]bool{}
	for k, v := range env {
		if len(v) < 24 || seen[v] {
			t.Errorf("%s: short or repeated password", k)
		}
		seen[v] = true
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v (%v), want 0600", path, fi.Mode(), err)
	}
	before, _ := os.ReadFile(path)
	if out, err := exec.Command("sh", "passwords.sh", path).CombinedOutput(); err == nil {
		t.Errorf("a second run succeeded:\n%s", out)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("a second run changed the file")
	}
}

// TestNATSConfigs checks every server config: it is what nodeConf
// generates from internal/natsauth (-update rewrites it); nats-server's own
// parser, with the passwords passwords.sh makes, accepts it and gives the
// accounts, users, passwords and permissions natsauth's ServerOptions
// builds for the region; without the passwords it refuses to start; and
// each cluster is three nodes named after the compose services, JetStream
// on, routes to exactly its own region's nodes.
func TestNATSConfigs(t *testing.T) {
	c := readCompose(t)
	var want []string
	for _, r := range regions {
		for _, n := range nodes {
			f := filepath.Join("nats", r+"-"+n+".conf")
			want = append(want, f)
			gen := nodeConf(r, n)
			if *update {
				if err := os.WriteFile(f, []byte(gen), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if b, err := os.ReadFile(f); err != nil || string(b) != gen {
				t.Errorf("%s is not what internal/natsauth generates (%v): run go test ./docker/ -run TestNATSConfigs -update", f, err)
			}
		}
	}
	files, err := filepath.Glob("nats/*.conf")
	if err != nil || !slices.Equal(files, slices.Sorted(slices.Values(want))) {
		t.Fatalf("nats/*.conf: %v (%v), want %v", files, err, want)
	}

	// Without the passwords in the environment, no server starts.
	for _, v := range passwordVars() {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	if _, err := server.ProcessConfigFile(files[0]); err == nil || !strings.Contains(err.Error(), "MRKREPL_NATS_") {
		t.Errorf("%s parses without the passwords: %v", files[0], err)
	}
	_, env := runPasswords(t)
	for k, v := range env {
		t.Setenv(k, v)
	}

	for _, f := range files {
		opts, err := server.ProcessConfigFile(f)
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		node := strings.TrimSuffix(filepath.Base(f), ".conf") // us-east-1-a
		region := node[:len(node)-2]
		svc := "nats-" + node
		if opts.ServerName != node || opts.Cluster.Name != region || !opts.JetStream || opts.StoreDir == "" {
			t.Errorf("%s: server_name %q, cluster %q, jetstream %v, store_dir %q", f, opts.ServerName, opts.Cluster.Name, opts.JetStream, opts.StoreDir)
		}
		var routes []string
		for _, r := range opts.Routes {
			if !strings.HasPrefix(r.Host, "nats-"+region+"-") {
				t.Errorf("%s: route to %s, outside region %s", f, r.Host, region)
			}
			if _, ok := c.Services[r.Hostname()]; !ok {
				t.Errorf("%s: route to %s, which is not a service", f, r.Host)
			}
			routes = append(routes, r.Hostname())
		}
		if len(routes) != 3 {
			t.Errorf("%s: %d routes, want the region's 3 nodes", f, len(routes))
		}
		s, ok := c.Services[svc]
		if !ok || !slices.Contains(s.Volumes, "./"+f+":/etc/nats/nats-server.conf:ro") {
			t.Errorf("service %s does not mount %s", svc, f)
		}
		checkAccounts(t, f, opts, region, env)
	}
}

// checkAccounts compares the accounts and users nats-server parsed from f
// with those natsauth builds programmatically for the region.
func checkAccounts(t *testing.T, f string, got *server.Options, region string, env map[string]string) {
	t.Helper()
	spec := dockerSpec(region)
	spec.Passwords = map[string]string{}
	for _, k := range dockerUsers() {
		account, user, _ := strings.Cut(k, "/")
		spec.Passwords[k] = env[natsauth.EnvVar(account, user)]
	}
	var want server.Options
	if err := spec.ServerOptions(&want); err != nil {
		t.Fatal(err)
	}
	names := func(o *server.Options) []string {
		var n []string
		for _, a := range o.Accounts {
			n = append(n, a.Name)
		}
		return slices.Sorted(slices.Values(n))
	}
	if g, w := names(got), names(&want); !slices.Equal(g, w) {
		t.Errorf("%s: accounts %v, want %v", f, g, w)
	}
	type user struct {
		account, password string
		perms             *server.Permissions
	}
	users := func(o *server.Options) map[string]user {
		m := map[string]user{}
		for _, u := range o.Users {
			m[u.Username] = user{u.Account.Name, u.Password, u.Permissions}
		}
		return m
	}
	g, w := users(got), users(&want)
	if len(g) != len(w) {
		t.Errorf("%s: %d users, want %d", f, len(g), len(w))
	}
	for name, wu := range w {
		gu, ok := g[name]
		switch {
		case !ok:
			t.Errorf("%s: no user %s", f, name)
		case gu.account != wu.account:
			t.Errorf("%s: user %s in account %s, want %s", f, name, gu.account, wu.account)
		case gu.password != wu.password:
			t.Errorf("%s: user %s: the password is not the one in %s", f, name, natsauth.EnvVar(wu.account, name))
		case permString(gu.perms) != permString(wu.perms):
			t.Errorf("%s: user %s: permissions\n%s\nwant\n%s", f, name, permString(gu.perms), permString(wu.perms))
		}
	}
}

// permString is what permissions allow and deny, for comparing (the
// parser also sets the responses' default expiry, which Config omits).
func permString(p *server.Permissions) string {
	if p == nil {
		return "unrestricted"
	}
	sp := func(s *server.SubjectPermission) string {
		if s == nil {
			return "-"
		}
		return fmt.Sprintf("allow %v deny %v", s.Allow, s.Deny)
	}
	r := "no responses"
	if p.Response != nil {
		r = fmt.Sprintf("responses max %d", p.Response.MaxMsgs)
	}
	return fmt.Sprintf("publish %s; subscribe %s; %s", sp(p.Publish), sp(p.Subscribe), r)
}
