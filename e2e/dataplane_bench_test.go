package e2e

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
)

// BenchmarkDataPlane measures encrypt and decrypt over the NATS API with
// 64 requests in flight, in one run, so that the costs of authorization
// compare as ratios on this shared machine:
//
//   - noauth: one account, no service import; every request is the
//     workers' local principal, still checked against the key's policy;
//
//   - accounts: the production layout (docs/NATS.md): the application's
//     request crosses a service import (the server stamps Nats-Request-Info)
//     and the key's policy decides for the proven principal;
//
//   - accounts-noaudit: the same without the data-plane audit events;
//
//   - echo: a responder that does no work, same payload sizes, same import
//     path: the request/reply floor.
//
//     go test ./e2e -run '^$' -bench DataPlane -benchtime 20000x
func BenchmarkDataPlane(b *testing.B) {
	const inFlight = 64
	plaintext := make([]byte, 64)
	for _, mode := range []struct {
		name string
		opts mrkrepltest.Options
	}{
		{"noauth", mrkrepltest.Options{NoAuth: true, NoProxy: true, Regions: []string{"us-east-1", "eu-west-1"}}},
		{"accounts", mrkrepltest.Options{NoProxy: true, Regions: []string{"us-east-1", "eu-west-1"}}},
		{"accounts-noaudit", mrkrepltest.Options{NoProxy: true, NoDataPlaneAudit: true, Regions: []string{"us-east-1", "eu-west-1"}}},
	} {
		p := mrkrepltest.New(b, mode.opts)
		c := p.Region("us-east-1").Client
		ctx := context.Background()
		key, err := c.CreateKey(ctx, api.CreateKeyRequest{})
		if err != nil {
			b.Fatal(err)
		}
		ec := map[string]string{"tenant": "t1"}
		ct, err := c.EncryptWithContext(ctx, key.KeyID, plaintext, ec)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(mode.name+"/encrypt", func(b *testing.B) {
			parallel(b, inFlight, func() error {
				_, err := c.EncryptWithContext(ctx, key.KeyID, plaintext, ec)
				return err
			})
		})
		b.Run(mode.name+"/decrypt", func(b *testing.B) {
			parallel(b, inFlight, func() error {
				_, err := c.DecryptWithContext(ctx, "", ct.CiphertextBlob, ec)
				return err
			})
		})
		if mode.name != "accounts" {
			continue
		}
		// The floor: an echo of an encrypt-sized reply on the API's
		// subject space, through the same service import.
		admin, err := p.Connect("us-east-1", "echo")
		if err != nil {
			b.Fatal(err)
		}
		reply, _ := json.Marshal(api.EncryptResponse{KeyID: key.KeyID, Version: 1, CiphertextBlob: ct.CiphertextBlob})
		sub, err := admin.QueueSubscribe(layout.APISubject("us-east-1", "echo"), "echo", func(m *nats.Msg) { _ = m.Respond(reply) })
		if err != nil {
			b.Fatal(err)
		}
		nc, err := p.ConnectApp("us-east-1", mrkrepltest.DefaultApp.Account, mrkrepltest.DefaultApp.Users[0])
		if err != nil {
			b.Fatal(err)
		}
		req, _ := json.Marshal(api.EncryptRequest{KeyID: key.KeyID, Plaintext: plaintext, EncryptionContext: ec})
		b.Run("echo", func(b *testing.B) {
			parallel(b, inFlight, func() error {
				_, err := nc.Request(layout.APISubject("us-east-1", "echo"), req, 10*time.Second)
				return err
			})
		})
		_ = sub.Unsubscribe()
		nc.Close()
		admin.Close()
	}
}

// parallel runs b.N calls of f with n in flight and reports requests/s.
func parallel(b *testing.B, n int, f func() error) {
	b.Helper()
	var wg sync.WaitGroup
	work := make(chan struct{}, b.N)
	for range b.N {
		work <- struct{}{}
	}
	close(work)
	errs := make(chan error, n)
	b.ResetTimer()
	start := time.Now()
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				if err := f(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
}
