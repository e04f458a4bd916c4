package bench

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/messages"
)

// Bound is the crypto bound of one replication: what the protocol's
// cryptography alone allows on the machine's cores, with no JetStream, no
// KV, no encoding and no scheduling around it.
type Bound struct {
	// PerSecond is how many replications' worth of crypto Procs goroutines
	// completed per second.
	PerSecond float64
	// Procs is the number of goroutines run in parallel (the cores).
	Procs int
	// Iterations is how many replications' worth of crypto were completed.
	Iterations int
	// Elapsed is the wall time of the measurement.
	Elapsed time.Duration
	// CPUPerReplication is the process CPU time used per iteration.
	CPUPerReplication time.Duration
}

// MeasureBound runs the cryptography of one replication in a loop, on
// procs goroutines, for about d, through two HSMs of the backend under
// test: a plays the source region, b the destination. One iteration is
// exactly the protocol's work (docs/PROTOCOL.md):
//
//   - 4 ECDSA P-384 signatures with the HSMs' RSKs (init and material by a,
//     offer and receipt by b),
//   - 8 ECDSA P-384 verifications in Go (the proxy and the receiving worker
//     each check every message),
//   - b.CreateAgreementKey (ECDH key generation, RAKB),
//   - a.WrapForPeer (ECDH key generation RAKA, ECDH, KDF, AES-KWP wrap),
//   - b.UnwrapFromPeer (ECDH, KDF, AES-KWP unwrap, store K),
//   - 2 key confirmations (AES-CMAC), one per HSM.
//
// Every iteration stores a new key in b; the HSMs are throwaway.
func MeasureBound(ctx context.Context, a, b hsmsvc.HSM, procs int, d time.Duration) (*Bound, error) {
	if procs < 1 {
		return nil, fmt.Errorf("measure bound: procs %d, want at least 1", procs)
	}
	rc, err := newReplicationCrypto(a, b)
	if err != nil {
		return nil, fmt.Errorf("measure bound: %w", err)
	}
	// A destination stores K under the key id the source names (it is bound
	// into the KDF), so every iteration needs a key of its own in a. They
	// are made before the clock starts, as many as one warm-up iteration
	// says the run will use, with a margin; running out ends the run early.
	warm := hsmsvc.KeyRef{KeyID: messages.NewKeyID(), Version: 1}
	if err := a.GenerateKey(ctx, warm); err != nil {
		return nil, fmt.Errorf("measure bound: generate key: %w", err)
	}
	t0 := time.Now()
	if err := rc.replicate(ctx, warm); err != nil {
		return nil, fmt.Errorf("measure bound: %w", err)
	}
	one := max(time.Since(t0), 100*time.Microsecond)
	n := min(int(2*float64(procs)*d.Seconds()/one.Seconds())+4*procs, maxBoundKeys)
	keys := make(chan hsmsvc.KeyRef, n)
	if err := generateKeys(ctx, a, procs, n, keys); err != nil {
		return nil, fmt.Errorf("measure bound: %w", err)
	}
	close(keys)

	var (
		done     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	cpu0 := processCPU()
	start := time.Now()
	deadline := start.Add(d)
	for range procs {
		wg.Go(func() {
			for ref := range keys {
				if !time.Now().Before(deadline) || ctx.Err() != nil {
					return
				}
				if err := rc.replicate(ctx, ref); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	if firstErr != nil {
		return nil, fmt.Errorf("measure bound: %w", firstErr)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("measure bound: %w", err)
	}
	n = int(done.Load())
	if n == 0 {
		return nil, errors.New("measure bound: no replication completed in the time given")
	}
	return &Bound{
		PerSecond:         float64(n) / elapsed.Seconds(),
		Procs:             procs,
		Iterations:        n,
		Elapsed:           elapsed,
		CPUPerReplication: cpu / time.Duration(n),
	}, nil
}

// maxBoundKeys caps the keys made for one bound measurement.
const maxBoundKeys = 200_000

// generateKeys makes n fresh keys in h on procs goroutines and sends them on out.
func generateKeys(ctx context.Context, h hsmsvc.HSM, procs, n int, out chan<- hsmsvc.KeyRef) error {
	var next atomic.Int64
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				ref := hsmsvc.KeyRef{KeyID: messages.NewKeyID(), Version: 1}
				if err := h.GenerateKey(ctx, ref); err != nil {
					errs[i] = fmt.Errorf("generate key: %w", err)
					return
				}
				out <- ref
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// replicationCrypto holds what every iteration of the bound shares.
type replicationCrypto struct {
	a, b             hsmsvc.HSM
	aPub, bPub       *ecdsa.PublicKey
	aKID, bKID       []byte
	partition        string
	srcName, dstName string
}

func newReplicationCrypto(a, b hsmsvc.HSM) (*replicationCrypto, error) {
	rc := &replicationCrypto{a: a, b: b, partition: "bench", srcName: "region-a", dstName: "region-b"}
	for _, x := range []struct {
		h   hsmsvc.HSM
		pub **ecdsa.PublicKey
		kid *[]byte
	}{{a, &rc.aPub, &rc.aKID}, {b, &rc.bPub, &rc.bKID}} {
		pub, ok := x.h.Signer().Public().(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("rsk of %s hsm is %T, want *ecdsa.PublicKey", x.h.Backend(), x.h.Signer().Public())
		}
		kid, err := messages.KID(pub)
		if err != nil {
			return nil, err
		}
		*x.pub, *x.kid = pub, kid
	}
	return rc, nil
}

// replicate runs one replication's crypto: ref is copied from a to b under
// a fresh key id.
func (rc *replicationCrypto) replicate(ctx context.Context, ref hsmsvc.KeyRef) error {
	rid := messages.NewID()
	var initDigest, offerDigest, materialDigest [sha512.Size384]byte
	fill(initDigest[:], offerDigest[:], materialDigest[:])

	// init: a signs, proxy and b verify.
	if err := rc.signVerify(rc.a, rc.aPub, initDigest[:]); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	// offer: b makes RAKB, signs; proxy and a verify.
	rakb, err := rc.b.CreateAgreementKey(ctx, rid, time.Now().Add(time.Hour))
	if err != nil {
		return fmt.Errorf("create agreement key: %w", err)
	}
	if err := rc.signVerify(rc.b, rc.bPub, offerDigest[:]); err != nil {
		return fmt.Errorf("offer: %w", err)
	}
	// material: a wraps K for RAKB, signs, computes its key confirmation;
	// proxy and b verify.
	kctx := hsmsvc.KDFContext{
		Partition: rc.partition, SrcRegion: rc.srcName, DstRegion: rc.dstName,
		SrcKID: rc.aKID, DstKID: rc.bKID, RAKB: rakb, ReplicationID: rid,
		KeyID: ref.KeyID, Version: ref.Version, InitDigest: initDigest[:], OfferDigest: offerDigest[:],
	}
	res, err := rc.a.WrapForPeer(ctx, hsmsvc.WrapRequest{PeerPublicKey: rakb, Context: kctx})
	if err != nil {
		return fmt.Errorf("wrap for peer: %w", err)
	}
	if err := rc.signVerify(rc.a, rc.aPub, materialDigest[:]); err != nil {
		return fmt.Errorf("material: %w", err)
	}
	transcript := messages.TranscriptDigest(initDigest[:], offerDigest[:], materialDigest[:])
	kcA, err := rc.a.KeyConfirmation(ctx, ref, transcript)
	if err != nil {
		return fmt.Errorf("key confirmation in source: %w", err)
	}
	// receipt: b unwraps K, stores it, computes the key confirmation (it
	// matches a's), signs; proxy and a verify.
	kctx.RAKA = res.RAKA
	if err := rc.b.UnwrapFromPeer(ctx, hsmsvc.UnwrapRequest{PeerPublicKey: res.RAKA, Wrapped: res.Wrapped, Context: kctx}); err != nil {
		return fmt.Errorf("unwrap from peer: %w", err)
	}
	kcB, err := rc.b.KeyConfirmation(ctx, ref, transcript)
	if err != nil {
		return fmt.Errorf("key confirmation in destination: %w", err)
	}
	if !hmac.Equal(kcA, kcB) {
		return errors.New("key confirmations differ")
	}
	var receiptDigest [sha512.Size384]byte
	fill(receiptDigest[:])
	if err := rc.signVerify(rc.b, rc.bPub, receiptDigest[:]); err != nil {
		return fmt.Errorf("receipt: %w", err)
	}
	return nil
}

// signVerify signs digest with h's RSK and verifies the signature twice,
// as the proxy and the receiving worker do.
func (rc *replicationCrypto) signVerify(h hsmsvc.HSM, pub *ecdsa.PublicKey, digest []byte) error {
	sig, err := h.Signer().Sign(rand.Reader, digest, crypto.SHA384)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	for range 2 {
		if !ecdsa.VerifyASN1(pub, digest, sig) {
			return errors.New("signature does not verify")
		}
	}
	return nil
}

func fill(bs ...[]byte) {
	for _, b := range bs {
		_, _ = rand.Read(b)
	}
}

// OpCosts are single-core timings of the protocol's public-key primitives
// with Go's crypto (what the soft backend runs), as DESIGN §5 lists them.
type OpCosts struct {
	Sign, Verify, KeyGen, ECDH time.Duration
}

// PerReplication is the CPU time of one replication's public-key crypto on
// one core: 4 signatures, 8 verifications, 2 key generations, 2 ECDH.
func (c OpCosts) PerReplication() time.Duration {
	return 4*c.Sign + 8*c.Verify + 2*c.KeyGen + 2*c.ECDH
}

// MeasureOpCosts times each primitive on one goroutine for about d.
func MeasureOpCosts(d time.Duration) (OpCosts, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return OpCosts{}, err
	}
	digest := make([]byte, sha512.Size384)
	fill(digest)
	sig, err := ecdsa.SignASN1(rand.Reader, priv, digest)
	if err != nil {
		return OpCosts{}, err
	}
	peer, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		return OpCosts{}, err
	}
	var c OpCosts
	var opErr error
	time1 := func(fn func() error) time.Duration {
		n, start := 0, time.Now()
		for n < 5 || time.Since(start) < d {
			if err := fn(); err != nil && opErr == nil {
				opErr = err
			}
			n++
		}
		return time.Since(start) / time.Duration(n)
	}
	c.Sign = time1(func() error { _, err := ecdsa.SignASN1(rand.Reader, priv, digest); return err })
	c.Verify = time1(func() error {
		if !ecdsa.VerifyASN1(&priv.PublicKey, digest, sig) {
			return errors.New("signature does not verify")
		}
		return nil
	})
	c.KeyGen = time1(func() error { _, err := ecdh.P384().GenerateKey(rand.Reader); return err })
	mine, err := ecdh.P384().GenerateKey(rand.Reader)
	if err != nil {
		return OpCosts{}, err
	}
	c.ECDH = time1(func() error { _, err := mine.ECDH(peer.PublicKey()); return err })
	return c, opErr
}
