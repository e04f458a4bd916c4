package config

import (
	"bytes"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDecodeStrict(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown field", "region: a\nregoin: b\n", `line 2: unknown field "regoin"`},
		{"unknown nested field", "nats:\n  url: nats://x\n  password: hunter2\n", `line 3: unknown field "password"`},
		{"duplicate key", "region: a\nregion: b\n", `already defined`},
		{"wrong type", "concurrency: many\n", "line 1: cannot unmarshal"},
		{"duration without unit", "heartbeat:\n  interval: 10\n", "line 2: cannot unmarshal"},
		{"two documents", "region: a\n---\nregion: b\n", "more than one YAML document"},
		{"not a map", "- a\n- b\n", "cannot unmarshal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var w Worker
			var p Proxy
			target := any(&w)
			if strings.Contains(tc.yaml, "heartbeat") {
				target = &p
			}
			err := Decode([]byte(tc.yaml), target)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode: got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error repeats a value from the file: %v", err)
			}
		})
	}
}

func TestDecodeOverDefaults(t *testing.T) {
	w := DefaultWorker()
	if err := Decode([]byte("region: eu-west-1\nhsm:\n  uri: soft:/var/lib/hsm\n"), &w); err != nil {
		t.Fatal(err)
	}
	if w.Region != "eu-west-1" || w.HSM.URI != "soft:/var/lib/hsm" {
		t.Errorf("file values not applied: %+v", w)
	}
	if w.Concurrency != 16 || w.NATS.URL != "nats://127.0.0.1:4222" || w.Log.Level != "info" {
		t.Errorf("defaults lost: %+v", w)
	}
	if err := Decode(nil, &w); err != nil {
		t.Errorf("empty file: %v", err)
	}
	p := DefaultProxy()
	err := Decode([]byte("regions:\n  us-east-1: {url: nats://us:4222}\n  eu-west-1:\n    url: nats://eu:4222\n    creds_file: /eu.creds\nnats:\n  creds_file: /all.creds\nheartbeat: {interval: 3s}\n"), &p)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Region("us-east-1"); got.URL != "nats://us:4222" || got.CredsFile != "/all.creds" {
		t.Errorf("us-east-1: %+v", got)
	}
	if got := p.Region("eu-west-1"); got.CredsFile != "/eu.creds" {
		t.Errorf("eu-west-1 keeps its own creds: %+v", got)
	}
	p.Regions["ap-southeast-2"] = NATS{URL: "nats://ap:4222", User: "proxy", PasswordFile: "/ap.pw"}
	if got := p.Region("ap-southeast-2"); got.CredsFile != "" || got.User != "proxy" {
		t.Errorf("a region's user replaces the shared creds file: %+v", got)
	}
	if p.Heartbeat.Interval != 3*time.Second || p.Heartbeat.Timeout != 5*time.Second {
		t.Errorf("heartbeat: %+v", p.Heartbeat)
	}
}

func TestLoadErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, dir, "w.yaml", "regoin: x\n")
	w := DefaultWorker()
	err := Load(path, &w)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `line 1: unknown field "regoin"`) {
		t.Fatalf("got %v", err)
	}
	if err := Load(filepath.Join(dir, "missing.yaml"), &w); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Fatalf("missing file: %v", err)
	}
}

func TestWorkerValidate(t *testing.T) {
	dir := t.TempDir()
	bundle := writeFile(t, dir, "bundle.json", "{}")
	root := writeFile(t, dir, "root.pub", "")
	pin := writeFile(t, dir, "pin", "1234\n")
	valid := func() Worker {
		w := DefaultWorker()
		w.Region, w.Bundle, w.HSM.URI = "us-east-1", bundle, "soft:"+dir
		w.BundleRootKey = root
		return w
	}
	if w := valid(); w.Validate() != nil {
		t.Fatalf("valid config refused: %v", w.Validate())
	}
	for _, tc := range []struct {
		name   string
		modify func(*Worker)
		want   []string
	}{
		{"nothing set", func(w *Worker) { *w = DefaultWorker() }, []string{
			"region (--region): required", "bundle (--bundle): required", "hsm.uri (--hsm): required"}},
		{"no root key", func(w *Worker) { w.BundleRootKey = "" }, []string{"bundle_root_key (--bundle-root-key): required"}},
		{"root key and insecure", func(w *Worker) { w.InsecureUnsignedBundle = true }, []string{"insecure_unsigned_bundle (--insecure-unsigned-bundle): set together"}},
		{"missing root key", func(w *Worker) { w.BundleRootKey = filepath.Join(dir, "nope.pub") }, []string{"bundle_root_key (--bundle-root-key): stat"}},
		{"serial file unsigned", func(w *Worker) {
			w.BundleRootKey, w.InsecureUnsignedBundle, w.BundleSerialFile = "", true, filepath.Join(dir, "serial")
		}, []string{"bundle_serial_file (--bundle-serial-file): an unsigned bundle has no serial"}},
		{"bad region", func(w *Worker) { w.Region = "US EAST" }, []string{`region (--region): "US EAST" is not a valid region name`}},
		{"missing bundle", func(w *Worker) { w.Bundle = filepath.Join(dir, "nope.json") }, []string{"bundle (--bundle): stat", "nope.json"}},
		{"bundle is a dir", func(w *Worker) { w.Bundle = dir }, []string{"is a directory"}},
		{"replicas", func(w *Worker) { w.JetStream.Replicas = 2 }, []string{"jetstream.replicas (--replicas): want 1, 3 or 5, got 2"}},
		{"concurrency", func(w *Worker) { w.Concurrency = 0 }, []string{"concurrency (--concurrency): want 1 to 4096, got 0"}},
		{"url scheme", func(w *Worker) { w.NATS.URL = "http://x:4222" }, []string{`nats.url (--nats-url): "http://x:4222": scheme "http"`}},
		{"url with password", func(w *Worker) { w.NATS.URL = "nats://a:4222,nats://admin:s3cret@b:4222" }, []string{"credentials in a URL are refused"}},
		{"url no host", func(w *Worker) { w.NATS.URL = "nats://:4222" }, []string{"no host"}},
		{"cert without key", func(w *Worker) { w.NATS.CertFile = pin }, []string{"nats.cert_file (--nats-cert): a client certificate needs both"}},
		{"missing creds", func(w *Worker) { w.NATS.CredsFile = filepath.Join(dir, "x.creds") }, []string{"nats.creds_file (--nats-creds): stat"}},
		{"user without password", func(w *Worker) { w.NATS.User = "worker" }, []string{"nats.user (--nats-user): a user needs both user and password_file"}},
		{"user and creds", func(w *Worker) { w.NATS.User, w.NATS.PasswordFile, w.NATS.CredsFile = "worker", pin, pin }, []string{"give either user and password_file or creds_file"}},
		{"missing password file", func(w *Worker) { w.NATS.User, w.NATS.PasswordFile = "worker", filepath.Join(dir, "pw") }, []string{"nats.password_file (--nats-password-file): stat"}},
		{"pin-value", func(w *Worker) { w.HSM.URI = "pkcs11:token=a?module-path=/m.so&pin-value=1234" }, []string{"pin-value is refused"}},
		{"pin file for soft", func(w *Worker) { w.HSM.PINFile = pin }, []string{"hsm.pin_file (--pin-file): the soft backend takes no PIN"}},
		{"host kdf for soft", func(w *Worker) { w.HSM.AllowHostKDF = true }, []string{"hsm.allow_host_kdf (--allow-host-kdf): applies to pkcs11 tokens only"}},
		{"hsm scheme", func(w *Worker) { w.HSM.URI = "tpm:/dev/tpm0" }, []string{`scheme "tpm", want soft: or pkcs11:`}},
		{"metrics addr", func(w *Worker) { w.Metrics.Addr = "9101" }, []string{`metrics.addr (--metrics-addr): "9101": want host:port`}},
		{"metrics port", func(w *Worker) { w.Metrics.Addr = ":http" }, []string{"bad port"}},
		{"log", func(w *Worker) { w.Log = Log{Level: "loud", Format: "xml"} }, []string{`log.level (--log-level): "loud"`, `log.format (--log-format): "xml"`}},
		{"clock skew", func(w *Worker) { w.ClockSkew = time.Hour }, []string{"clock_skew (--clock-skew): 1h0m0s: want 0 (default) to 10m"}},
		{"run timeout", func(w *Worker) { w.RunTimeout = -time.Second }, []string{"run_timeout (--run-timeout): negative"}},
		{"max attempts", func(w *Worker) { w.MaxAttempts = 1000 }, []string{"max_attempts (--max-attempts): want 0 (default) to 100, got 1000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := valid()
			tc.modify(&w)
			err := w.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "1234") {
				t.Errorf("error repeats a secret: %v", err)
			}
		})
	}
}

func TestProxyValidate(t *testing.T) {
	dir := t.TempDir()
	bundle := writeFile(t, dir, "bundle.json", "{}")
	valid := func() Proxy {
		p := DefaultProxy()
		p.Bundle, p.InsecureUnsignedBundle = bundle, true
		p.Regions = map[string]NATS{"us-east-1": {URL: "nats://us:4222"}, "eu-west-1": {URL: "tls://eu:4222"}}
		return p
	}
	if p := valid(); p.Validate() != nil {
		t.Fatalf("valid config refused: %v", p.Validate())
	}
	for _, tc := range []struct {
		name   string
		modify func(*Proxy)
		want   string
	}{
		{"no regions", func(p *Proxy) { p.Regions = nil }, "regions (--region): required"},
		{"no root key", func(p *Proxy) { p.InsecureUnsignedBundle = false }, "bundle_root_key (--bundle-root-key): required"},
		{"region without url", func(p *Proxy) { p.Regions["ap-southeast-2"] = NATS{} }, "regions.ap-southeast-2.url: required"},
		{"region url", func(p *Proxy) { p.Regions["ap-southeast-2"] = NATS{URL: "ap:4222"} }, "regions.ap-southeast-2.url"},
		{"bad region name", func(p *Proxy) { p.Regions["Bad_Region"] = NATS{URL: "nats://x"} }, `"Bad_Region" is not a valid region name`},
		{"nats url unused", func(p *Proxy) { p.NATS.URL = "nats://x" }, "nats.url: unused by the proxy"},
		{"durable", func(p *Proxy) { p.Durable = "a.b" }, `durable (--durable): "a.b"`},
		{"delay", func(p *Proxy) { p.Delay = -time.Second }, "delay (--delay): negative"},
		{"loss", func(p *Proxy) { p.Loss = 1.5 }, "loss (--loss): want a probability from 0 to 1, got 1.5"},
		{"heartbeat interval", func(p *Proxy) { p.Heartbeat.Interval = time.Millisecond }, "heartbeat.interval (--heartbeat-interval): 1ms: want at least 100ms"},
		{"heartbeat timeout", func(p *Proxy) { p.Heartbeat.Timeout = time.Minute }, "heartbeat.timeout (--heartbeat-timeout): 1m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := valid()
			tc.modify(&p)
			if err := p.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	p := valid()
	p.Heartbeat = Heartbeat{Disabled: true}
	if err := p.Validate(); err != nil {
		t.Errorf("disabled heartbeat needs no interval: %v", err)
	}
	p = valid()
	err := p.CheckRegions("prod", []string{"ap-southeast-2", "us-east-1"})
	for _, want := range []string{"no URL for region ap-southeast-2", "region eu-west-1 is not in partition \"prod\""} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckRegions: got %v, want %q", err, want)
		}
	}
}

func TestPrecedence(t *testing.T) {
	// file < environment < flags
	w := DefaultWorker()
	if err := Decode([]byte("region: from-file\nconcurrency: 4\nnats:\n  url: nats://file:4222\nlog: {level: debug}\n"), &w); err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.String("config", "", "")
	fs.StringVar(&w.Region, "region", w.Region, "")
	fs.IntVar(&w.Concurrency, "concurrency", w.Concurrency, "")
	fs.StringVar(&w.NATS.URL, "nats-url", w.NATS.URL, "")
	fs.StringVar(&w.Log.Level, "log-level", w.Log.Level, "")
	env := map[string]string{
		"MRKREPL_REGION":      "from-env",
		"MRKREPL_CONCURRENCY": "8",
		"MRKREPL_CONFIG":      "ignored-here",
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := ApplyEnv(fs, lookup); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--region", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	if w.Region != "from-flag" || w.Concurrency != 8 || w.NATS.URL != "nats://file:4222" || w.Log.Level != "debug" {
		t.Errorf("precedence: %+v", w)
	}

	env["MRKREPL_CONCURRENCY"] = "eight"
	err := ApplyEnv(fs, lookup)
	if err == nil || !strings.Contains(err.Error(), `MRKREPL_CONCURRENCY="eight"`) {
		t.Errorf("bad env value: %v", err)
	}
}

func TestApplyEnvMulti(t *testing.T) {
	var got []string
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.Func("region", "", func(s string) error { got = append(got, s); return nil })
	lookup := func(k string) (string, bool) {
		return "us-east-1=nats://a:4222,nats://b:4222  eu-west-1=nats://c:4222", k == "MRKREPL_REGION"
	}
	if err := ApplyEnv(fs, lookup, "region"); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != "us-east-1=nats://a:4222,nats://b:4222" || got[1] != "eu-west-1=nats://c:4222" {
		t.Errorf("got %q", got)
	}
}

func TestConfigPath(t *testing.T) {
	none := func(string) (string, bool) { return "", false }
	env := func(k string) (string, bool) { return "/env.yaml", k == "MRKREPL_CONFIG" }
	for _, tc := range []struct {
		args   []string
		lookup func(string) (string, bool)
		want   string
	}{
		{nil, none, ""},
		{nil, env, "/env.yaml"},
		{[]string{"--config", "/a.yaml"}, env, "/a.yaml"},
		{[]string{"--region", "x", "-config=/b.yaml"}, none, "/b.yaml"},
		{[]string{"--config=/a.yaml", "--config", "/c.yaml"}, none, "/c.yaml"},
		{[]string{"--", "--config", "/a.yaml"}, none, ""},
	} {
		if got := ConfigPath(tc.args, tc.lookup); got != tc.want {
			t.Errorf("ConfigPath(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

func TestLogValueHidesSecrets(t *testing.T) {
	w := DefaultWorker()
	w.Region, w.Bundle = "us-east-1", "/etc/mrkrepl/bundle.json"
	w.NATS = NATS{URL: "nats://user:hunter2@a:4222", CredsFile: "/run/secrets/nats.creds"}
	w.HSM = HSM{URI: "pkcs11:token=r?module-path=/m.so&pin-value=4711", PINFile: "/run/secrets/pin"}
	p := DefaultProxy()
	p.Regions = map[string]NATS{"eu-west-1": {URL: "nats://u:hunter2@eu:4222"}}
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	log.Info("configuration", "worker", w, "proxy", p)
	out := buf.String()
	for _, secret := range []string{"hunter2", "4711"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q: %s", secret, out)
		}
	}
	for _, want := range []string{"/run/secrets/nats.creds", "/run/secrets/pin", "REDACTED", "us-east-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q: %s", want, out)
		}
	}
}
