package bench

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/internal/layout"
	"github.com/mrkrepl/mrkrepl/internal/natsauth"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
	"github.com/nats-io/nats.go"
)

// benchContext is the encryption context of every request: a key policy
// condition could test it, and it is part of every ciphertext's AAD.
var benchContext = map[string]string{"tenant": "bench", "purpose": "data-plane"}

// dpKeys creates n keys with c (the application's client: its principal is
// in their default policies) and, for decrypt, a ciphertext under each.
type dpKeys struct {
	ids   []string
	blobs [][]byte
}

func natsKeys(ctx context.Context, c *client.Client, cfg *DataPlaneConfig) (*dpKeys, error) {
	ks := &dpKeys{}
	pt := make([]byte, cfg.PlaintextBytes)
	for range cfg.Keys {
		k, err := c.CreateKey(ctx, api.CreateKeyRequest{Description: "bench data plane"})
		if err != nil {
			return nil, fmt.Errorf("create key: %w", err)
		}
		ct, err := c.EncryptWithContext(ctx, k.KeyID, pt, benchContext)
		if err != nil {
			return nil, fmt.Errorf("encrypt: %w", err)
		}
		ks.ids = append(ks.ids, k.KeyID)
		ks.blobs = append(ks.blobs, ct.CiphertextBlob)
	}
	return ks, nil
}

// natsCall is the i-th request of op and a fresh value for its reply.
func natsCall(cfg *DataPlaneConfig, ks *dpKeys, pt []byte, i int) (req, resp any) {
	k := i % len(ks.ids)
	switch cfg.Op {
	case OpDecrypt:
		return api.DecryptRequest{CiphertextBlob: ks.blobs[k], EncryptionContext: benchContext}, new(api.DecryptResponse)
	case OpGenerateDataKey:
		return api.GenerateDataKeyRequest{KeyID: ks.ids[k], NumberOfBytes: 32, EncryptionContext: benchContext}, new(api.GenerateDataKeyResponse)
	}
	return api.EncryptRequest{KeyID: ks.ids[k], Plaintext: pt, EncryptionContext: benchContext}, new(api.EncryptResponse)
}

// setupNATS prepares the NATS targets. Every target is called with
// client.Client.Call (JSON encoding, request/reply, JSON decoding), with
// the same requests; the floor's responders answer with a reply the
// workers gave, byte for byte.
func setupNATS(ctx context.Context, cfg *DataPlaneConfig, p, pNoAudit *mrkrepltest.Partition) (*dpSetup, error) {
	s := &dpSetup{targets: map[string]*dpTarget{},
		client: "mrkrepl client.Client.Call (encoding/json, nats.go request/reply on one connection, the application account's user)"}
	pt := make([]byte, cfg.PlaintextBytes)
	op := map[string]string{OpEncrypt: api.OpEncrypt, OpDecrypt: api.OpDecrypt, OpGenerateDataKey: api.OpGenerateDataKey}[cfg.Op]
	mrkrepl := func(name, what string, p *mrkrepltest.Partition) (*dpKeys, error) {
		c := p.Region(dpRegion).Client
		ks, err := natsKeys(ctx, c, cfg)
		if err != nil {
			return nil, err
		}
		s.targets[name] = &dpTarget{name: name, what: what, call: func(ctx context.Context, i int) error {
			req, resp := natsCall(cfg, ks, pt, i)
			return c.Call(ctx, op, req, resp)
		}}
		return ks, nil
	}
	ks, err := mrkrepl(TargetMrkrepl, "the workers' API: application account → service import → worker (policy, KV read, HSM, audit event)", p)
	if err != nil {
		return s, err
	}
	if pNoAudit != nil {
		if _, err := mrkrepl(TargetMrkreplNoAudit, "the same, workers without data-plane audit events", pNoAudit); err != nil {
			return s, err
		}
	}
	// One real reply, for the floor to send.
	req, resp := natsCall(cfg, ks, pt, 0)
	c := p.Region(dpRegion).Client
	if err := c.Call(ctx, op, req, resp); err != nil {
		return s, err
	}
	reply, _ := json.Marshal(resp)
	reqBytes, _ := json.Marshal(req)
	s.reqBytes, s.respBytes = len(reqBytes), len(reply)

	// The floor: responders in the workers' account, as many as the
	// worker's API instances, on one connection of the worker's user.
	echoOp := "bench-echo-" + cfg.Op
	rc, err := p.ConnectAs(dpRegion, natsauth.UserWorker, "bench-echo")
	if err != nil {
		return s, err
	}
	n := cfg.WorkerConcurrency
	if n <= 0 {
		n = 16 // workers.Config.Concurrency's default
	}
	for range n {
		if _, err := rc.QueueSubscribe(layout.APISubject(dpRegion, echoOp), "q", func(m *nats.Msg) { _ = m.Respond(reply) }); err != nil {
			return s, fmt.Errorf("echo responder: %w", err)
		}
	}
	if err := rc.Flush(); err != nil {
		return s, err
	}
	s.targets[TargetFloor] = &dpTarget{name: TargetFloor, what: "a responder that does no work, in the workers' account, through the same import, same sizes",
		call: func(ctx context.Context, i int) error {
			req, resp := natsCall(cfg, ks, pt, i)
			return c.Call(ctx, echoOp, req, resp)
		}}
	// The same responders called from inside the workers' account.
	lc, err := p.Connect(dpRegion, "bench-local")
	if err != nil {
		return s, err
	}
	local := client.New(lc, dpRegion)
	s.targets[TargetFloorLocal] = &dpTarget{name: TargetFloorLocal, what: "that responder called from inside the workers' account (no service import)",
		call: func(ctx context.Context, i int) error {
			req, resp := natsCall(cfg, ks, pt, i)
			return local.Call(ctx, echoOp, req, resp)
		}}
	return s, nil
}
