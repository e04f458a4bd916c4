package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestWorkerAndProxyCommands runs the partition as an operator would: one
// nats-server per region, "mrkrepl rsk" per region, "mrkrepl bundle", then
// "mrkrepl worker" per region and "mrkrepl proxy" (in-process, as commands
// with their flags), and replicates a key through them.
func TestWorkerAndProxyCommands(t *testing.T) {
	dir := t.TempDir()
	regions := []string{"us-east-1", "eu-west-1", "ap-southeast-2"}
	urls := map[string]string{}
	for _, r := range regions {
		s, err := server.NewServer(&server.Options{
			ServerName: r, Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
			StoreDir: filepath.Join(dir, r, "js"), NoLog: true, NoSigs: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("%s not ready", r)
		}
		t.Cleanup(s.Shutdown)
		urls[r] = s.ClientURL()
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	mustRun := func(args ...string) []byte {
		t.Helper()
		var out, errb bytes.Buffer
		if code := run(ctx, args, &out, &errb); code != 0 {
			t.Fatalf("mrkrepl %v: exit %d: %s", args, code, errb.String())
		}
		return out.Bytes()
	}
	var fragments []string
	for _, r := range regions {
		f := filepath.Join(dir, r+".json")
		if err := os.WriteFile(f, mustRun("rsk", "--hsm", "soft:"+filepath.Join(dir, r, "hsm"), "--region", r, "--partition", "cmdtest"), 0o644); err != nil {
			t.Fatal(err)
		}
		fragments = append(fragments, f)
	}
	bundle := filepath.Join(dir, "bundle.json")
	if err := os.WriteFile(bundle, mustRun(append([]string{"bundle"}, fragments...)...), 0o644); err != nil {
		t.Fatal(err)
	}

	dctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	codes := make(chan int, len(regions)+1)
	daemon := func(args ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out, errb bytes.Buffer
			code := run(dctx, args, &out, &errb)
			if code != 0 {
				t.Errorf("mrkrepl %s: exit %d: %s", args[0], code, errb.String())
			}
			codes <- code
		}()
	}
	for _, r := range regions {
		daemon("worker", "--region", r, "--nats-url", urls[r], "--bundle", bundle,
			"--hsm", "soft:"+filepath.Join(dir, r, "hsm"), "--log-level", "error", "--metrics-addr", "127.0.0.1:0")
	}
	proxyArgs := []string{"proxy", "--bundle", bundle, "--log-level", "error"}
	for _, r := range regions {
		proxyArgs = append(proxyArgs, "--region", r+"="+urls[r])
	}
	daemon(proxyArgs...)

	nc, err := nats.Connect(urls["us-east-1"])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	us := client.New(nc, "us-east-1")
	// Poll until the worker serves its API.
	var key *api.Key
	for key == nil {
		k, err := us.CreateKey(ctx, api.CreateKeyRequest{})
		if err == nil {
			key = k
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("worker never served create-key: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	for _, dst := range regions[1:] {
		rep, err := us.ReplicateKey(ctx, key.KeyID, dst)
		if err != nil {
			t.Fatal(err)
		}
		if rep, err = us.WaitReplication(ctx, rep.ReplicationID); err != nil || rep.State != api.StateCompleted {
			t.Fatalf("replicate to %s: %v %+v", dst, err, rep)
		}
	}
	ct, err := us.Encrypt(ctx, key.KeyID, []byte("across processes"), nil)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := nats.Connect(urls["ap-southeast-2"])
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	pt, err := client.New(enc, "ap-southeast-2").Decrypt(ctx, ct.CiphertextBlob, nil)
	if err != nil || string(pt.Plaintext) != "across processes" {
		t.Fatalf("decrypt in ap-southeast-2: %v %+v", err, pt)
	}
	stop()
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 0 {
			t.Errorf("a daemon exited %d after interrupt", c)
		}
	}
}
