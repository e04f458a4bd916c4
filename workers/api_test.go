package workers_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mrkrepl/mrkrepl/api"
	"github.com/mrkrepl/mrkrepl/client"
	"github.com/mrkrepl/mrkrepl/messages"
	"github.com/mrkrepl/mrkrepl/mrkrepltest"
)

// TestAPIConcurrentRequests sends many requests at once, answered and
// refused, and checks that each gets its own answer. The worker serves
// requests of one endpoint concurrently. Under -race this also exercises
// the hand-off from micro's goroutine to the worker's (CI's race run once
// caught micro reading its request's answer state while the worker's
// goroutine wrote it; the window is narrow, so this test does not catch
// that every time: the fix is that the request no longer leaves micro's
// goroutine, see endpoint).
func TestAPIConcurrentRequests(t *testing.T) {
	p := mrkrepltest.New(t, mrkrepltest.Options{NoProxy: true, Regions: []string{"a-1", "b-1"}})
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c := p.Region("a-1").Client
	key, err := c.CreateKey(ctx, api.CreateKeyRequest{Description: "concurrent"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan string, 2*n)
	for i := range n {
		wg.Go(func() {
			unknown := messages.NewKeyID()
			if _, err := c.DescribeKey(ctx, unknown); !client.IsNotFound(err) {
				errs <- "describe of an unknown key: " + errString(err) + ", want 404"
			}
			got, err := c.DescribeKey(ctx, key.KeyID)
			if err != nil || got.KeyID != key.KeyID || got.Description != "concurrent" {
				errs <- "describe of the key: " + errString(err)
			}
			// Refused before any I/O: the answer races micro's goroutine
			// most closely.
			if _, err := c.DescribeKey(ctx, "mrk-XYZ"); !isCode(err, api.CodeBadRequest) {
				errs <- "describe of a malformed key id: " + errString(err) + ", want 400"
			}
			if i%8 == 0 {
				if _, err := c.Encrypt(ctx, key.KeyID, nil, nil); !isCode(err, api.CodeBadRequest) {
					errs <- "encrypt of nothing: " + errString(err) + ", want 400"
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func isCode(err error, code string) bool {
	var e *client.Error
	return errors.As(err, &e) && e.Code == code
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}
