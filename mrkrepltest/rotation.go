package mrkrepltest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/hsmsvc"
	"github.com/mrkrepl/mrkrepl/messages"
)

// RSK rotation, as an operator does it (docs/OPERATIONS.md, "RSK rotation"),
// with the bundle pushed to the running components instead of written to a
// file they reload.

// SetBundle makes b the partition's trust bundle: it gives it to the proxy
// and then to every running worker (SetBundle of each), and keeps it for
// the workers and proxy started later. It stops at the first component
// that refuses b; p.Bundle is then unchanged, but components that accepted
// b keep it.
func (p *Partition) SetBundle(b *messages.Bundle) error {
	return p.pushBundle(b, "")
}

// pushBundle gives b to the proxy, then to the workers of every region but
// signer, then to signer's worker: the order of OPERATIONS.md's rotation
// steps, where every verifier knows a new RSK before its region signs with
// it. (Pushed the other way, a receipt signed with the new RSK can reach
// the proxy or the peer's worker before they know it, and is dead-lettered
// as unknown_kid.)
func (p *Partition) pushBundle(unsigned *messages.Bundle, signer string) error {
	b, err := p.signBundle(unsigned)
	if err != nil {
		return err
	}
	if p.Proxy != nil {
		if err := p.Proxy.SetBundle(b); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	var last *Region
	for _, r := range p.regions {
		if r.Worker == nil {
			continue
		}
		if r.Name == signer {
			last = r
			continue
		}
		if err := r.Worker.SetBundle(b); err != nil {
			return fmt.Errorf("worker of %s: %w", r.Name, err)
		}
	}
	if last != nil {
		if err := last.Worker.SetBundle(b); err != nil {
			return fmt.Errorf("worker of %s: %w", last.Name, err)
		}
	}
	p.Bundle = b
	return nil
}

// signBundle signs b with the root key under the next serial and returns
// the bundle VerifyBundle makes of it, as a daemon would put in force (and
// keeps the signed form in SignedBundle). A serial is never used twice,
// even for a bundle a component then refuses.
func (p *Partition) signBundle(b *messages.Bundle) (*messages.Bundle, error) {
	data, err := json.Marshal(b)
	if err != nil {
		return nil, err
	}
	serial := p.BundleSerial + 1
	signed, err := messages.SignBundle(data, serial, p.RootKey)
	if err != nil {
		return nil, err
	}
	p.BundleSerial = serial
	verified, got, err := messages.VerifyBundle(signed, &p.RootKey.PublicKey, serial)
	if err != nil || got != serial {
		return nil, fmt.Errorf("mrkrepltest: the signed bundle does not verify: %v", err)
	}
	p.SignedBundle = signed
	return verified, nil
}

// RotateRSK makes a new RSK in region's HSM (hsmsvc.RSKRotator), adds it to
// the trust bundle valid from now for a year, and pushes the bundle to every
// component (SetBundle). It returns the new kid. From then on the region's
// worker signs with the new RSK (the newest valid one); the old RSKs stay in
// the bundle, so messages they signed keep verifying until RetireRSK or
// RemoveRSK.
func (p *Partition) RotateRSK(ctx context.Context, region string) (kid []byte, err error) {
	r := p.Region(region)
	if r == nil {
		return nil, fmt.Errorf("rotate rsk: no region %q", region)
	}
	rot, ok := r.HSM.(hsmsvc.RSKRotator)
	if !ok {
		return nil, fmt.Errorf("rotate rsk of %s: the %s hsm cannot hold a second rsk", region, r.HSM.Backend())
	}
	s, err := rot.CreateRSK(ctx)
	if err != nil {
		return nil, fmt.Errorf("rotate rsk of %s: %w", region, err)
	}
	if kid, err = messages.KID(s.Public()); err != nil {
		return nil, fmt.Errorf("rotate rsk of %s: %w", region, err)
	}
	now := time.Now().Truncate(time.Millisecond)
	keys := append(p.Bundle.Keys(), messages.BundleKey{
		Region: region, KID: kid, PublicKey: s.Public(), NotBefore: now, NotAfter: now.Add(365 * 24 * time.Hour),
	})
	b, err := messages.NewBundle(p.Bundle.Partition(), p.Bundle.Regions(), keys)
	if err != nil {
		return nil, fmt.Errorf("rotate rsk of %s: %w", region, err)
	}
	if err := p.pushBundle(b, region); err != nil {
		return nil, fmt.Errorf("rotate rsk of %s: %w", region, err)
	}
	return kid, nil
}

// RetireRSK sets the not_after of kid's bundle entry to notAfter and pushes
// the bundle to every component: messages it signs with a later sent_at are
// refused (kid_not_valid), and the region's worker no longer picks it.
func (p *Partition) RetireRSK(kid []byte, notAfter time.Time) error {
	return p.editBundle(kid, func(k *messages.BundleKey) bool {
		k.NotAfter = notAfter
		return true
	})
}

// RemoveRSK removes kid from the trust bundle and pushes the bundle to every
// component: messages it signs are refused (unknown_kid).
func (p *Partition) RemoveRSK(kid []byte) error {
	return p.editBundle(kid, func(*messages.BundleKey) bool { return false })
}

// editBundle rebuilds the bundle with edit applied to kid's entry (false
// drops it) and pushes it.
func (p *Partition) editBundle(kid []byte, edit func(*messages.BundleKey) bool) error {
	var keys []messages.BundleKey
	found := false
	for _, k := range p.Bundle.Keys() {
		if bytes.Equal(k.KID, kid) {
			found = true
			if !edit(&k) {
				continue
			}
		}
		keys = append(keys, k)
	}
	if !found {
		return errors.New("kid not in the trust bundle")
	}
	b, err := messages.NewBundle(p.Bundle.Partition(), p.Bundle.Regions(), keys)
	if err != nil {
		return err
	}
	return p.SetBundle(b)
}
