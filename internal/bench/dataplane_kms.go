package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/mrkrepl/mrkrepl/kmsapi"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// recorder is the SDK client's HTTP client: an http.Client of the SDK's
// own kind (awshttp.BuildableClient, idle connections kept for every
// request in flight) that can keep the last reply's body, for the floors.
type recorder struct {
	c    *awshttp.BuildableClient
	on   atomic.Bool
	mu   sync.Mutex
	last []byte // reply body
	// lastReq is the request body's length.
	lastReq int
}

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	on := r.on.Load()
	if on && req.Body != nil {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(b))
		r.mu.Lock()
		r.lastReq = len(b)
		r.mu.Unlock()
	}
	resp, err := r.c.Do(req)
	if err != nil || !on {
		return resp, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.last = b
	r.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}

// sdkClient is the AWS SDK for Go v2 KMS client every KMS target is
// called with: static credentials, no retries, the SDK's HTTP client with
// as many idle connections per host as requests in flight (its default,
// 10, would close and reopen connections at 64 in flight).
func sdkClient(url, id, secret string, h aws.HTTPClient) *kms.Client {
	return kms.NewFromConfig(aws.Config{
		Region: dpRegion, Credentials: credentials.NewStaticCredentialsProvider(id, secret, ""),
		RetryMaxAttempts: 1, HTTPClient: h,
	}, func(o *kms.Options) { o.BaseEndpoint = aws.String(url) })
}

// kmsKeys are keys of one endpoint and, for decrypt, a ciphertext of each.
type kmsKeys struct {
	ids   []string
	blobs [][]byte
}

func (ks *kmsKeys) call(ctx context.Context, c *kms.Client, op string, pt []byte, i int) error {
	k := i % len(ks.ids)
	var err error
	switch op {
	case OpDecrypt:
		_, err = c.Decrypt(ctx, &kms.DecryptInput{CiphertextBlob: ks.blobs[k], EncryptionContext: benchContext})
	case OpGenerateDataKey:
		_, err = c.GenerateDataKey(ctx, &kms.GenerateDataKeyInput{KeyId: &ks.ids[k], NumberOfBytes: aws.Int32(32), EncryptionContext: benchContext})
	default:
		_, err = c.Encrypt(ctx, &kms.EncryptInput{KeyId: &ks.ids[k], Plaintext: pt, EncryptionContext: benchContext})
	}
	return err
}

// createKMSKeys creates cfg.Keys keys through c (CreateKey: multi-Region
// on mrkrepl, where the access key's principal is the creator and so in
// the default policy; plain on a peer) and a ciphertext under each.
func createKMSKeys(ctx context.Context, c *kms.Client, cfg *DataPlaneConfig, multiRegion bool) (*kmsKeys, error) {
	ks := &kmsKeys{}
	pt := make([]byte, cfg.PlaintextBytes)
	for range cfg.Keys {
		in := &kms.CreateKeyInput{Description: aws.String("bench data plane")}
		if multiRegion {
			in.MultiRegion = aws.Bool(true)
		}
		k, err := c.CreateKey(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("create key: %w", err)
		}
		id := aws.ToString(k.KeyMetadata.KeyId)
		ct, err := c.Encrypt(ctx, &kms.EncryptInput{KeyId: &id, Plaintext: pt, EncryptionContext: benchContext})
		if err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
		ks.ids = append(ks.ids, id)
		ks.blobs = append(ks.blobs, ct.CiphertextBlob)
	}
	return ks, nil
}

// staticCreds is the floor's Credentials: one access key, its signing key
// derived once per date (the worker caches its derived keys too).
type staticCreds struct {
	id, secret string
	p          authz.Principal
	mu         sync.Mutex
	keys       map[string][]byte
}

func (s *staticCreds) SigningKey(_ context.Context, id, date, region, service string) ([]byte, authz.Principal, error) {
	if id != s.id {
		return nil, authz.Principal{}, kmsapi.ErrUnknownAccessKey
	}
	ck := date + "/" + region + "/" + service
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[ck]
	if !ok {
		k = kmsapi.DeriveSigningKey([]byte(s.secret), date, region, service)
		s.keys[ck] = k
	}
	return k, s.p, nil
}

// cannedHandler answers every operation with the same reply.
type cannedHandler struct{ reply json.RawMessage }

func (h cannedHandler) ServeKMS(context.Context, authz.Principal, string, []byte) (any, error) {
	return h.reply, nil
}

var kmsOpNames = map[string]string{OpEncrypt: "Encrypt", OpDecrypt: "Decrypt", OpGenerateDataKey: "GenerateDataKey"}

// setupKMS prepares the KMS targets, all called through one kind of AWS
// SDK client (sdkClient).
func setupKMS(ctx context.Context, cfg *DataPlaneConfig, p, pNoAudit *mrkrepltest.Partition) (*dpSetup, error) {
	s := &dpSetup{targets: map[string]*dpTarget{},
		client: "AWS SDK for Go v2 (service/kms), SigV4 signed by the SDK, one client per target, RetryMaxAttempts 1, MaxIdleConnsPerHost = concurrency, plain HTTP on loopback"}
	pt := make([]byte, cfg.PlaintextBytes)
	newHTTP := func() *recorder {
		return &recorder{c: awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConns = max(cfg.Concurrency, 100)
			tr.MaxIdleConnsPerHost = cfg.Concurrency
		})}
	}
	app := mrkrepltest.DefaultAppPrincipal()
	var (
		rec     *recorder
		mrkKeys *kmsKeys
		mrkC    *kms.Client
		ak      struct{ id, secret string }
	)
	mrkrepl := func(name, what string, p *mrkrepltest.Partition) error {
		key, err := p.CreateAccessKey(ctx, dpRegion, app)
		if err != nil {
			return fmt.Errorf("access key: %w", err)
		}
		h := newHTTP()
		c := sdkClient(p.Region(dpRegion).KMSURL, key.AccessKeyID, key.SecretAccessKey, h)
		ks, err := createKMSKeys(ctx, c, cfg, true)
		if err != nil {
			return err
		}
		if rec == nil {
			rec, mrkKeys, mrkC = h, ks, c
			ak.id, ak.secret = key.AccessKeyID, key.SecretAccessKey
		}
		s.targets[name] = &dpTarget{name: name, what: what, call: func(ctx context.Context, i int) error {
			return ks.call(ctx, c, cfg.Op, pt, i)
		}}
		return nil
	}
	if err := mrkrepl(TargetMrkrepl, "the worker's KMS endpoint: SigV4, access key of the application's principal, key policy, KV read, HSM, audit event", p); err != nil {
		return s, err
	}
	if pNoAudit != nil {
		if err := mrkrepl(TargetMrkreplNoAudit, "the same, workers without data-plane audit events", pNoAudit); err != nil {
			return s, err
		}
	}
	// One real reply, for the floors to send.
	rec.on.Store(true)
	err := mrkKeys.call(ctx, mrkC, cfg.Op, pt, 0)
	rec.on.Store(false)
	if err != nil {
		return s, err
	}
	reply := rec.last
	s.respBytes = len(reply)
	s.reqBytes = rec.lastReq

	// floor-http: no SigV4, no routing, no work.
	l, url, err := loopbackListener()
	if err != nil {
		return s, err
	}
	hs := httpServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, http.MaxBytesReader(nil, r.Body, kmsapi.MaxBody))
		h := w.Header()
		h.Set("Content-Type", kmsapi.ContentType)
		h.Set("X-Amzn-RequestId", requestID())
		_, _ = w.Write(reply)
	}))
	go func() { _ = hs.Serve(l) }()
	s.closers = append(s.closers, func() { _ = hs.Close() })
	hc := sdkClient(url, ak.id, ak.secret, newHTTP())
	s.targets[TargetFloorHTTP] = &dpTarget{name: TargetFloorHTTP, what: "an HTTP handler that reads the body and sends a recorded reply (net/http server set up as the endpoint's), no SigV4 check",
		call: func(ctx context.Context, i int) error { return mrkKeys.call(ctx, hc, cfg.Op, pt, i) }}

	// floor-sigv4: the endpoint's own server and SigV4 check, no work.
	srv, err := kmsapi.New(kmsapi.Config{Region: dpRegion,
		Credentials: &staticCreds{id: ak.id, secret: ak.secret, p: authz.Principal{Account: mrkrepltest.DefaultApp.Account, User: mrkrepltest.DefaultApp.Users[0]}, keys: map[string][]byte{}},
		Handler:     cannedHandler{reply: reply}, Operations: []string{kmsOpNames[cfg.Op]}})
	if err != nil {
		return s, err
	}
	l2, url2, err := loopbackListener()
	if err != nil {
		return s, err
	}
	// kmsapi.Server is an http.Handler; served by an http.Server set up
	// as its Serve sets one up (Serve itself cannot be stopped without a
	// race with its start).
	hs2 := httpServer(srv)
	go func() { _ = hs2.Serve(l2) }()
	s.closers = append(s.closers, func() { _ = hs2.Close() })
	sc := sdkClient(url2, ak.id, ak.secret, newHTTP())
	s.targets[TargetFloorSigV4] = &dpTarget{name: TargetFloorSigV4, what: "kmsapi.Server (SigV4 verified, operation routed, reply encoded, metrics) with a handler that does no work",
		call: func(ctx context.Context, i int) error { return mrkKeys.call(ctx, sc, cfg.Op, pt, i) }}

	if cfg.PeerURL != "" {
		pc := sdkClient(cfg.PeerURL, "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", newHTTP())
		pks, err := createKMSKeys(ctx, pc, cfg, false)
		if err != nil {
			return s, fmt.Errorf("peer %s: %w", cfg.PeerURL, err)
		}
		s.targets[TargetPeer] = &dpTarget{name: TargetPeer, what: "the peer at " + cfg.PeerURL + ", same client", peerPID: cfg.PeerPID,
			call: func(ctx context.Context, i int) error { return pks.call(ctx, pc, cfg.Op, pt, i) }}
	}
	return s, nil
}
