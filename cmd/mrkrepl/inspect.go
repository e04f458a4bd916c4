package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/mrkrepl/mrkrepl/messages"
)

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", "[flags] [FILE|-]", stderr)
	bundlePath := fs.String("bundle", "", "verify the message against this trust bundle `FILE`")
	receiver := fs.String("receiver", "", "with --bundle: the receiving `region` (dst must match)")
	at := fs.String("at", "", "with --bundle: verify as of this RFC 3339 `time` (default: now)")
	if err := parseFlags(fs, args, true); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		fs.Usage()
		return errUsage
	}
	var in io.Reader = os.Stdin
	if name := fs.Arg(0); name != "" && name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	data, err := io.ReadAll(io.LimitReader(in, 4*messages.MaxMessageSize))
	if err != nil {
		return err
	}
	raw := decodeInput(data)
	var env *messages.Envelope
	if *bundlePath == "" {
		env, err = messages.Parse(raw)
	} else {
		bundle, berr := loadAnyBundle(*bundlePath)
		if berr != nil {
			return berr
		}
		now := time.Now()
		if *at != "" {
			if now, err = time.Parse(time.RFC3339, *at); err != nil {
				return fmt.Errorf("--at: %w", err)
			}
		}
		env, err = messages.Verify(raw, messages.VerifyOptions{Bundle: bundle, Now: now, Receiver: *receiver})
	}
	if err != nil {
		return err
	}
	out := describe(env, *bundlePath != "")
	b, _ := json.MarshalIndent(out, "", "  ")
	fmt.Fprintln(stdout, string(b))
	return nil
}

// decodeInput accepts raw CBOR, hex or base64 (surrounding space ignored).
func decodeInput(data []byte) []byte {
	t := bytes.TrimSpace(data)
	if b, err := hex.DecodeString(string(t)); err == nil {
		return b
	}
	if b, err := base64.StdEncoding.DecodeString(string(t)); err == nil {
		return b
	}
	return data
}

type hexBytes []byte

func (h hexBytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

func describe(env *messages.Envelope, verified bool) map[string]any {
	m := env.Message
	out := map[string]any{
		"verified":       verified,
		"kid":            hexBytes(env.KID),
		"digest":         hexBytes(env.Digest),
		"size":           len(env.Raw),
		"v":              m.V,
		"type":           m.Type,
		"msg_id":         m.MsgID,
		"replication_id": m.ReplicationID,
		"partition":      m.Partition,
		"src":            m.Src,
		"dst":            m.Dst,
		"sent_at":        m.SentTime().UTC().Format(time.RFC3339Nano),
		"expires_at":     m.ExpiryTime().UTC().Format(time.RFC3339Nano),
	}
	// Each body by its CBOR field names, as on the wire (and as every other
	// JSON of mrkrepl is: snake_case); bytes in hex. The wrapped key is
	// shown by its length only.
	for name, body := range map[string]any{
		"init": m.Init, "offer": m.Offer, "material": m.Material, "receipt": m.Receipt,
		"sync": m.Sync, "status": m.Status, "handover": m.Handover, "accept": m.Accept,
	} {
		v := reflect.ValueOf(body)
		if v.IsNil() {
			continue
		}
		fields := cborFields(v.Elem())
		if name == "material" {
			delete(fields, "wrapped_key")
			fields["wrapped_key_bytes"] = len(m.Material.WrappedKey)
		}
		out[name] = fields
	}
	return out
}

// cborFields maps a message body (a struct) to its fields by their CBOR
// names: []byte as hex, structs as such maps, the rest as they are.
func cborFields(v reflect.Value) map[string]any {
	out := map[string]any{}
	t := v.Type()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("cbor"), ",")
		if name == "" || name == "-" {
			continue
		}
		f := v.Field(i)
		switch {
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Uint8:
			out[name] = hexBytes(f.Bytes())
		case f.Kind() == reflect.Struct:
			out[name] = cborFields(f)
		default:
			out[name] = f.Interface()
		}
	}
	return out
}
