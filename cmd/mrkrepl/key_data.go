package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/mrkrepl/mrkrepl/api"
)

// This file is the data-plane subcommands of "mrkrepl key" (encrypt,
// decrypt, generate-data-key) and their input and output helpers.

func keyEncrypt(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	text := fs.String("plaintext", "", "the `text` to encrypt (it shows in process listings: prefer --in for secrets)")
	in := fs.String("in", "", "read the plaintext, 1 to 4096 bytes, from `FILE` (- for stdin)")
	ec := contextFlag(fs, "decrypt needs the same pairs")
	aad := fs.String("aad", "", "older raw form of the context: opaque `text` no policy can test (not with --context)")
	out := fs.String("out", "", "write the ciphertext blob, raw, to `FILE` (- for stdout) instead of printing it in base64")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	set := setFlags(fs)
	switch {
	case set["plaintext"] == set["in"]:
		return usageError(fs, "give one of --plaintext and --in")
	case *out != "" && k.flags.output == outputJSON:
		return usageError(fs, "--out and --output json exclude each other")
	}
	plaintext := []byte(*text)
	if set["in"] {
		if plaintext, err = readInput(*in, api.MaxPlaintext); err != nil {
			if errors.As(err, new(tooLargeError)) {
				return fmt.Errorf("--in %s: %w (for more, encrypt a data key: generate-data-key)", *in, err)
			}
			return fmt.Errorf("--in %s: %w", *in, err)
		}
	}
	if err := k.connect(); err != nil {
		return err
	}
	r, err := do(ctx, k, func(ctx context.Context) (*api.EncryptResponse, error) {
		var r api.EncryptResponse
		return &r, k.c.Call(ctx, api.OpEncrypt, api.EncryptRequest{KeyID: pos[0], Plaintext: plaintext, EncryptionContext: ec.m, AAD: optionalBytes(*aad)}, &r)
	})
	if err != nil {
		return err
	}
	switch {
	case k.flags.output == outputJSON:
		return printJSON(k.stdout, r)
	case *out != "":
		return writeOutput(k.stdout, *out, r.CiphertextBlob, 0o644)
	}
	_, err = fmt.Fprintln(k.stdout, base64.StdEncoding.EncodeToString(r.CiphertextBlob))
	return err
}

func keyDecrypt(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	in := fs.String("in", "", "read the ciphertext blob from `FILE` (- for stdin), raw or in base64")
	b64 := fs.String("ciphertext", "", "the ciphertext blob in `base64`")
	ec := contextFlag(fs, "the same pairs as given to encrypt")
	aad := fs.String("aad", "", "the raw context `text` given to encrypt (older form)")
	keyID := fs.String("key-id", "", "refuse the blob unless it was made with `KEY_ID`")
	out := fs.String("out", "", "write the plaintext to `FILE` (mode 0600) instead of stdout")
	if _, err := k.flags.parse(fs, args); err != nil {
		return err
	}
	set := setFlags(fs)
	switch {
	case set["in"] == set["ciphertext"]:
		return usageError(fs, "give one of --in and --ciphertext")
	case *out != "" && k.flags.output == outputJSON:
		return usageError(fs, "--out and --output json exclude each other")
	}
	var blob []byte
	var err error
	if set["in"] {
		data, err := readInput(*in, maxBlobInput)
		if err != nil {
			return fmt.Errorf("--in %s: %w", *in, err)
		}
		if blob, err = decodeBlob(data); err != nil {
			return fmt.Errorf("--in %s: %w", *in, err)
		}
	} else if blob, err = base64.StdEncoding.DecodeString(strings.TrimSpace(*b64)); err != nil {
		return usageError(fs, "--ciphertext: not base64: %v", err)
	}
	if err := k.connect(); err != nil {
		return err
	}
	r, err := do(ctx, k, func(ctx context.Context) (*api.DecryptResponse, error) {
		var r api.DecryptResponse
		return &r, k.c.Call(ctx, api.OpDecrypt, api.DecryptRequest{KeyID: *keyID, CiphertextBlob: blob, EncryptionContext: ec.m, AAD: optionalBytes(*aad)}, &r)
	})
	if err != nil {
		return err
	}
	switch {
	case k.flags.output == outputJSON:
		return printJSON(k.stdout, r)
	case *out != "":
		return writeOutput(k.stdout, *out, r.Plaintext, 0o600)
	}
	// The plaintext as it is: decrypt > file gives the bytes that were
	// encrypted. Only a terminal gets a final newline, for the prompt.
	if _, err := k.stdout.Write(r.Plaintext); err != nil {
		return err
	}
	if isTerminal(k.stdout) && !bytes.HasSuffix(r.Plaintext, []byte("\n")) {
		_, err = fmt.Fprintln(k.stdout)
	}
	return err
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func keyGenerateDataKey(ctx context.Context, k *keyCmd, fs *flag.FlagSet, args []string) error {
	n := fs.Int("bytes", 32, "length of the data key: 16, 24 or 32 `bytes`")
	ec := contextFlag(fs, "decrypting the data key needs the same pairs")
	aad := fs.String("aad", "", "older raw form of the context (opaque `text`; not with --context)")
	out := fs.String("out", "", "write the encrypted data key (a ciphertext blob), raw, to `FILE` instead of printing it in base64")
	ptOut := fs.String("plaintext-out", "", "write the plaintext data key, raw, to `FILE` (mode 0600; - for stdout, then with --out) instead of printing it in base64")
	pos, err := k.flags.parse(fs, args, "KEY_ID")
	if err != nil {
		return err
	}
	switch {
	case *n != 16 && *n != 24 && *n != 32:
		return usageError(fs, "--bytes %d: want 16, 24 or 32", *n)
	case (*out != "" || *ptOut != "") && k.flags.output == outputJSON:
		return usageError(fs, "--out and --plaintext-out exclude --output json")
	case *out == "-":
		return usageError(fs, "--out -: the encrypted data key goes to a file; for the plaintext one on stdout, --plaintext-out -")
	case *ptOut == "-" && *out == "":
		return usageError(fs, "--plaintext-out - needs --out FILE for the encrypted data key")
	case *ptOut != "" && *ptOut == *out:
		return usageError(fs, "--out and --plaintext-out name the same file")
	}
	if err := k.connect(); err != nil {
		return err
	}
	r, err := do(ctx, k, func(ctx context.Context) (*api.GenerateDataKeyResponse, error) {
		var r api.GenerateDataKeyResponse
		return &r, k.c.Call(ctx, api.OpGenerateDataKey, api.GenerateDataKeyRequest{KeyID: pos[0], NumberOfBytes: *n, EncryptionContext: ec.m, AAD: optionalBytes(*aad)}, &r)
	})
	if err != nil {
		return err
	}
	defer clear(r.Plaintext)
	if k.flags.output == outputJSON {
		return printJSON(k.stdout, r)
	}
	if *out != "" {
		if err := writeOutput(k.stdout, *out, r.CiphertextBlob, 0o644); err != nil {
			return err
		}
	}
	if *ptOut == "-" {
		// The raw data key alone on stdout, for a pipe.
		_, err := k.stdout.Write(r.Plaintext)
		return err
	}
	fields := []field{
		{"key id", r.KeyID},
		{"version", strconv.FormatUint(uint64(r.Version), 10)},
	}
	if *ptOut != "" {
		if err := writeOutput(k.stdout, *ptOut, r.Plaintext, 0o600); err != nil {
			return err
		}
	} else {
		fields = append(fields, field{"plaintext", base64.StdEncoding.EncodeToString(r.Plaintext)})
	}
	if *out == "" {
		fields = append(fields, field{"ciphertext", base64.StdEncoding.EncodeToString(r.CiphertextBlob)})
	}
	return printFields(k.stdout, fields)
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

func optionalBytes(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// maxBlobInput bounds what decrypt reads: the largest blob (21-byte
// header, 12-byte nonce, 4096 bytes, 16-byte tag) in base64 with line
// breaks fits easily.
const maxBlobInput = 16 << 10

// tooLargeError is an input of more than its limit (in bytes).
type tooLargeError int

func (e tooLargeError) Error() string { return fmt.Sprintf("more than %d bytes", int(e)) }

// readInput reads at most limit bytes from path ("-" is stdin); more, or
// nothing, is an error.
func readInput(path string, limit int) ([]byte, error) {
	var r io.Reader = os.Stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	switch {
	case err != nil:
		return nil, err
	case len(data) == 0:
		return nil, errors.New("empty")
	case len(data) > limit:
		return nil, tooLargeError(limit)
	}
	return data, nil
}

// decodeBlob takes a ciphertext blob raw or in base64 (as encrypt prints
// it). A raw blob starts with its format byte 0x01, which base64 never
// does, so the two cannot be confused.
func decodeBlob(data []byte) ([]byte, error) {
	if data[0] == 0x01 {
		return data, nil
	}
	blob, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(data)), ""))
	if err != nil {
		return nil, errors.New("neither a ciphertext blob (first byte 0x01) nor one in base64")
	}
	return blob, nil
}

// writeOutput writes data to path, or to stdout for "-".
func writeOutput(stdout io.Writer, path string, data []byte, perm os.FileMode) error {
	if path == "-" {
		_, err := stdout.Write(data)
		return err
	}
	return os.WriteFile(path, data, perm)
}

// contextPairs is a repeatable --context K=V flag: an encryption context.
type contextPairs struct{ m map[string]string }

func contextFlag(fs *flag.FlagSet, note string) *contextPairs {
	c := &contextPairs{}
	fs.Func("context", "a `K=V` pair of the encryption context (repeat for several; "+note+"; it is not secret: policies test it and audit events record it)", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("want KEY=VALUE, got %q", s)
		}
		if c.m == nil {
			c.m = map[string]string{}
		}
		if _, dup := c.m[k]; dup {
			return fmt.Errorf("key %q given twice", k)
		}
		c.m[k] = v
		return nil
	})
	return c
}
