package natsauth

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestConfigParses feeds the generated block to nats-server's own config
// parser and checks that it yields exactly the permissions of Permissions.
func TestConfigParses(t *testing.T) {
	for _, role := range []string{RoleWorker, RoleProxy, RoleClient} {
		t.Setenv("MRKREPL_NATS_"+strings.ToUpper(role)+"_PASSWORD", "pw-"+role)
	}
	f := filepath.Join(t.TempDir(), "auth.conf")
	if err := os.WriteFile(f, []byte("port: -1\n"+Config("eu-west-1")), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(f)
	if err != nil {
		t.Fatalf("nats-server refuses the generated config: %v\n%s", err, Config("eu-west-1"))
	}
	if len(opts.Users) != 3 {
		t.Fatalf("got %d users, want 3", len(opts.Users))
	}
	for _, u := range opts.Users {
		want := Permissions(u.Username, "eu-west-1")
		if u.Password != "pw-"+u.Username {
			t.Errorf("%s: password not taken from the environment", u.Username)
		}
		if !slices.Equal(u.Permissions.Publish.Allow, want.Publish.Allow) || !slices.Equal(u.Permissions.Subscribe.Allow, want.Subscribe.Allow) {
			t.Errorf("%s: parsed permissions %+v differ from %+v", u.Username, u.Permissions, want)
		}
	}
}

// TestDocShowsConfig keeps docs/NATS.md's example equal to the generator.
func TestDocShowsConfig(t *testing.T) {
	doc, err := os.ReadFile("../../docs/NATS.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), Config("us-east-1")) {
		t.Errorf("docs/NATS.md does not contain the current Config(\"us-east-1\"):\n%s", Config("us-east-1"))
	}
}

func TestClientCannotTouchProtocol(t *testing.T) {
	p := Permissions(RoleClient, "us-east-1")
	for _, s := range p.Publish.Allow {
		if strings.Contains(s, ".out.") || strings.Contains(s, ".in.") || strings.HasPrefix(s, "$") {
			t.Errorf("client may publish to %s", s)
		}
	}
}
