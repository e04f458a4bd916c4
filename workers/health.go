package workers

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"

	"github.com/mrkrepl/mrkrepl/internal/layout"
)

// Ready reports whether the worker can do its work, for /readyz: it has
// started, its NATS connection is up, the region's streams, buckets and
// durable consumers exist, and the HSM signs with the RSK the worker signs
// with now, one the trust bundle in force lists for this region (a fresh
// nonce signed and verified, in the manner of boulder's pkcs11key: a key is
// trusted once it has been used). The error names the first check that
// failed; it never carries secrets.
//
// Ready makes about a dozen JetStream API requests and one HSM signature;
// it is meant for probes every few seconds, not for a hot path.
func (w *Worker) Ready(ctx context.Context) error {
	w.mu.Lock()
	started := len(w.consumes) > 0 && w.res != nil
	w.mu.Unlock()
	if !started {
		return errors.New("worker not started")
	}
	if !w.cfg.Conn.IsConnected() {
		return fmt.Errorf("not connected to nats (status %s)", w.cfg.Conn.Status())
	}
	r := w.cfg.Region
	for _, s := range []string{layout.RequestsStream(r), layout.OutboxStream(r), layout.InboxStream(r), layout.EventsStream(r), layout.DLQStream(r)} {
		if _, err := w.js.Stream(ctx, s); err != nil {
			return fmt.Errorf("stream %s: %w", s, err)
		}
	}
	for _, c := range []struct{ stream, durable string }{
		{layout.RequestsStream(r), requestsConsumer},
		{layout.InboxStream(r), inboxConsumer},
	} {
		if _, err := w.js.Consumer(ctx, c.stream, c.durable); err != nil {
			return fmt.Errorf("consumer %s on %s: %w", c.durable, c.stream, err)
		}
	}
	for _, b := range []string{layout.KeysBucket(r), layout.ReplBucket(r), layout.ReplayBucket(r)} {
		if _, err := w.js.KeyValue(ctx, b); err != nil {
			return fmt.Errorf("kv bucket %s: %w", b, err)
		}
	}
	return w.hsmSelfTest(ctx)
}

// hsmSelfTest signs a random SHA-384-sized nonce with the RSK the worker
// signs with now and verifies the signature with the public key the trust
// bundle in force holds for its kid, so a swapped or unusable token is
// caught.
//
// One self-test runs at a time per worker: a hung HSM must not pile up
// readiness probes.
func (w *Worker) hsmSelfTest(ctx context.Context) error {
	if !w.met.selfTest.TryLock() {
		return errors.New("hsm: a previous self-test has not returned")
	}
	signer, kid := w.rsk()
	bk, ok := w.bundle().Key(kid)
	if !ok {
		w.met.selfTest.Unlock()
		return fmt.Errorf("hsm: rsk kid %x is not in the trust bundle", kid[:8])
	}
	pub, ok := bk.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		w.met.selfTest.Unlock()
		return errors.New("hsm: rsk in the trust bundle is not an ECDSA key")
	}
	var nonce [sha512.Size384]byte
	_, _ = rand.Read(nonce[:])
	done := make(chan error, 1)
	go func() {
		defer w.met.selfTest.Unlock()
		done <- w.hsmOp(opSelfTest, func() error {
			sig, err := signer.Sign(rand.Reader, nonce[:], crypto.SHA384)
			if err != nil {
				return fmt.Errorf("hsm: sign: %w", err)
			}
			if !ecdsa.VerifyASN1(pub, nonce[:], sig) {
				return errors.New("hsm: rsk signature does not verify with the bundle's public key")
			}
			return nil
		})
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("hsm: self-test: %w", ctx.Err())
	}
}
