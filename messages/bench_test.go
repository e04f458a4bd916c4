package messages

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"testing"
	"time"
)

func BenchmarkSeal(b *testing.B) {
	w := newKitWorld(b)
	for _, tc := range sealCases(w) {
		key := loadKey(b, tc.signer)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Seal(tc.msg, key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkVerify(b *testing.B) {
	w := newKitWorld(b)
	bundle := loadTestBundle(b)
	for _, tc := range sealCases(w) {
		raw, err := Seal(tc.msg, loadKey(b, tc.signer))
		if err != nil {
			b.Fatal(err)
		}
		opts := VerifyOptions{
			Bundle:   bundle,
			Now:      t0.Add(time.Second),
			Receiver: tc.msg.Dst,
			Subject:  InboxSubject(tc.msg.Dst, tc.msg.Src, tc.msg.Type),
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := Verify(raw, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParse measures the strict decoding alone (no signature check).
func BenchmarkParse(b *testing.B) {
	w := newKitWorld(b)
	for _, tc := range sealCases(w) {
		raw, err := Seal(tc.msg, loadKey(b, tc.signer))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := Parse(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkECDSAP384 measures the bare primitives on this machine, the
// bound for Seal and Verify.
func BenchmarkECDSAP384(b *testing.B) {
	key := loadKey(b, regionA)
	digest := make([]byte, 48)
	sig, err := key.Sign(nil, digest, crypto.SHA384)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("sign", func(b *testing.B) {
		for b.Loop() {
			if _, err := key.Sign(rand.Reader, digest, crypto.SHA384); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("verify", func(b *testing.B) {
		for b.Loop() {
			if !ecdsa.VerifyASN1(&key.PublicKey, digest, sig) {
				b.Fatal("does not verify")
			}
		}
	})
}
