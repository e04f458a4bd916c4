package messages_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

func Example() {
	// Each region's RSK; in production the private keys live in HSMs.
	rskA, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rskB, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	now := time.Now()
	bundle, err := messages.NewBundle("example", []string{"us-east-1", "eu-west-1"}, []messages.BundleKey{
		{Region: "us-east-1", PublicKey: &rskA.PublicKey, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)},
		{Region: "eu-west-1", PublicKey: &rskB.PublicKey, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)},
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	// A, the source, announces a replication to B.
	msg := messages.Message{
		Header: messages.Header{
			V:             messages.Version,
			Type:          messages.TypeInit,
			MsgID:         messages.NewID(),
			ReplicationID: messages.NewID(),
			Partition:     "example",
			Src:           "us-east-1",
			Dst:           "eu-west-1",
			SentAt:        now.UnixMilli(),
			ExpiresAt:     now.Add(5 * time.Minute).UnixMilli(),
		},
		Init: &messages.Init{
			KeyID:         messages.NewKeyID(),
			KeySpec:       messages.KeySpecSymmetricDefault,
			KeyUsage:      "ENCRYPT_DECRYPT",
			Version:       1,
			PrimaryRegion: "us-east-1",
		},
	}
	raw, err := messages.Seal(&msg, rskA)
	if err != nil {
		fmt.Println(err)
		return
	}

	// B receives it on its inbox.
	subject := messages.InboxSubject("eu-west-1", "us-east-1", messages.TypeInit)
	env, err := messages.Verify(raw, messages.VerifyOptions{Bundle: bundle, Now: time.Now(), Receiver: "eu-west-1", Subject: subject})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(subject, env.Message.Type, len(env.Digest))

	// A message for another region is refused with a reason.
	_, err = messages.Verify(raw, messages.VerifyOptions{Bundle: bundle, Now: time.Now(), Receiver: "us-east-1"})
	fmt.Println(messages.ReasonOf(err))
	// Output:
	// mrk.eu-west-1.in.us-east-1.replication.init replication.init 48
	// wrong_dst
}
