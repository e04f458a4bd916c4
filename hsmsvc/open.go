package hsmsvc

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
)

// Open returns the backend named by uri:
//
//	soft:                                 in memory; everything is lost at Close
//	soft:/abs/dir  or  soft:///abs/dir    persisted in dir (created 0700 if absent)
//	soft:/abs/dir?master-key-file=/path   … with the master key in /path
//	                                      (default dir/master.key)
//	pkcs11:…                              a PKCS#11 token (RFC 7512), see pkcs11.go
//
// A persisted soft HSM creates its master key (32 bytes from crypto/rand,
// mode 0600) only when the directory holds no objects yet; a missing or wrong
// master key for an existing store is an error. A directory is locked by one
// open HSM at a time.
func Open(ctx context.Context, uri string, opts Options) (HSM, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("open hsm: %w", err)
	}
	scheme, _, ok := strings.Cut(uri, ":")
	if !ok {
		return nil, fmt.Errorf("open hsm %q: no scheme, want one of soft:, soft:/dir, pkcs11:", uri)
	}
	switch strings.ToLower(scheme) {
	case "soft":
		cfg, err := parseSoftURI(uri)
		if err != nil {
			return nil, err
		}
		return openSoft(ctx, cfg, opts)
	case "pkcs11":
		return openPKCS11(ctx, uri, opts)
	default:
		return nil, fmt.Errorf("open hsm: unsupported scheme %q, want one of soft:, soft:/dir, pkcs11:", scheme)
	}
}

// softConfig is a parsed soft: URI.
type softConfig struct {
	dir           string // "" for in memory
	masterKeyFile string // "" for dir/master.key
}

func parseSoftURI(uri string) (softConfig, error) {
	fail := func(format string, args ...any) (softConfig, error) {
		return softConfig{}, fmt.Errorf("open hsm %q: "+format, append([]any{uri}, args...)...)
	}
	u, err := url.Parse(uri)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return fail("%v", err)
	}
	if u.Opaque != "" {
		return fail("directory %q is not absolute", u.Opaque)
	}
	if u.User != nil || u.Host != "" {
		return fail("a host is not allowed, write soft:/abs/dir or soft:///abs/dir")
	}
	if u.Fragment != "" {
		return fail("a fragment is not allowed")
	}
	var cfg softConfig
	if u.Path != "" {
		if !filepath.IsAbs(u.Path) {
			return fail("directory %q is not absolute", u.Path)
		}
		cfg.dir = filepath.Clean(u.Path)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return fail("query: %v", err)
	}
	for k, v := range q {
		switch k {
		case "master-key-file":
			if len(v) != 1 || v[0] == "" {
				return fail("master-key-file must be given once, with a path")
			}
			if cfg.dir == "" {
				return fail("master-key-file needs a directory (soft:/abs/dir?master-key-file=…)")
			}
			if !filepath.IsAbs(v[0]) {
				return fail("master-key-file %q is not absolute", v[0])
			}
			cfg.masterKeyFile = filepath.Clean(v[0])
		default:
			return fail("unknown parameter %q, the only one is master-key-file", k)
		}
	}
	return cfg, nil
}
