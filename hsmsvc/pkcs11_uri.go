package hsmsvc

// Parsing of the pkcs11: URI (RFC 7512) and of the PIN file it names. Pure
// Go, so it is the same with and without cgo.

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/mrkrepl/mrkrepl/internal/secretfile"
)

// DefaultRSKLabel is the CKA_LABEL of the RSK when the URI has no object=.
const DefaultRSKLabel = "mrkrepl-rsk"

// maxPINFileSize bounds what is read from a pin-source file.
const maxPINFileSize = secretfile.MaxLineSize

// pkcs11Config is a parsed pkcs11: URI. It holds no PIN, only where to read
// it, so it can be logged.
type pkcs11Config struct {
	modulePath   string // module-path, absolute
	token        string // token= (CKA_LABEL of the token), may be ""
	serial       string // serial=, may be ""
	rskLabel     string // object=, DefaultRSKLabel if absent
	pinSource    string // pin-source as a file path, may be ""
	allowHostKDF bool   // allow-host-kdf=true
}

// tokenName names the token for errors and logs: label, serial or both.
func (c *pkcs11Config) tokenName() string {
	switch {
	case c.token != "" && c.serial != "":
		return fmt.Sprintf("token %q (serial %s)", c.token, c.serial)
	case c.serial != "":
		return "token with serial " + c.serial
	default:
		return fmt.Sprintf("token %q", c.token)
	}
}

// queryAttrs are the query attributes, named in errors when they appear in
// the path.
var queryAttrs = map[string]bool{
	"module-path": true, "pin-source": true, "allow-host-kdf": true,
	"pin-value": true, "module-name": true,
}

// unsupportedPathAttrs are the RFC 7512 path attributes this backend does
// not use; naming one gets a precise error rather than "unknown".
var unsupportedPathAttrs = map[string]bool{
	"manufacturer": true, "model": true, "library-manufacturer": true,
	"library-description": true, "library-version": true, "id": true,
	"type": true, "slot-manufacturer": true, "slot-description": true,
	"slot-id": true,
}

// parsePKCS11URI parses uri strictly:
//
//	pkcs11:token=<label>;serial=<serial>;object=<rsk label>
//	       ?module-path=<abs path>&pin-source=<file>&allow-host-kdf=true
//
// Path attributes: token and/or serial (at least one; both must match when
// both are given), object (the RSK's CKA_LABEL, default DefaultRSKLabel).
// Query attributes: module-path (required, absolute), pin-source (a file:
// URI or an absolute path; optional when Options.PIN is set), allow-host-kdf
// (true or false; mrkrepl's own query attribute). pin-value is refused: a
// PIN in a URI ends up in argv, shell history and process listings. Every
// other attribute, a repeated attribute, an empty value, a fragment and bad
// percent-encoding are errors.
func parsePKCS11URI(uri string) (*pkcs11Config, error) {
	fail := func(format string, args ...any) (*pkcs11Config, error) {
		return nil, fmt.Errorf("pkcs11 uri: "+format, args...)
	}
	scheme, rest, ok := strings.Cut(uri, ":")
	if !ok || !strings.EqualFold(scheme, "pkcs11") {
		return fail("does not start with \"pkcs11:\"")
	}
	if strings.ContainsAny(rest, "#") {
		return fail("a fragment (#…) is not allowed")
	}
	path, query, _ := strings.Cut(rest, "?")
	cfg := &pkcs11Config{rskLabel: DefaultRSKLabel}

	seen := map[string]bool{}
	attr := func(kind, sep, s string) ([][2]string, error) {
		var out [][2]string
		if s == "" {
			return nil, nil
		}
		for _, a := range strings.Split(s, sep) {
			name, raw, ok := strings.Cut(a, "=")
			if !ok || name == "" {
				return nil, fmt.Errorf("pkcs11 uri: %s attribute %q is not name=value", kind, a)
			}
			name = strings.ToLower(name)
			if seen[name] {
				return nil, fmt.Errorf("pkcs11 uri: attribute %q given twice", name)
			}
			seen[name] = true
			v, err := url.PathUnescape(raw)
			if err != nil {
				return nil, fmt.Errorf("pkcs11 uri: attribute %q: bad percent-encoding", name)
			}
			if v == "" {
				return nil, fmt.Errorf("pkcs11 uri: attribute %q is empty", name)
			}
			out = append(out, [2]string{name, v})
		}
		return out, nil
	}

	pattrs, err := attr("path", ";", path)
	if err != nil {
		return nil, err
	}
	for _, a := range pattrs {
		switch name, v := a[0], a[1]; {
		case name == "token":
			cfg.token = v
		case name == "serial":
			cfg.serial = v
		case name == "object":
			cfg.rskLabel = v
		case queryAttrs[name]:
			return fail("%s is a query attribute: write it after \"?\" (pkcs11:token=…?%s=…)", name, name)
		case unsupportedPathAttrs[name]:
			return fail("path attribute %q is not supported; select the token with token= and/or serial=, the RSK with object=", name)
		default:
			return fail("unknown path attribute %q; the path takes token=, serial= and object=", name)
		}
	}
	qattrs, err := attr("query", "&", query)
	if err != nil {
		return nil, err
	}
	for _, a := range qattrs {
		switch name, v := a[0], a[1]; name {
		case "module-path":
			if !filepath.IsAbs(v) {
				return fail("module-path %q is not an absolute path", v)
			}
			cfg.modulePath = filepath.Clean(v)
		case "pin-source":
			p, err := pinSourcePath(v)
			if err != nil {
				return nil, err
			}
			cfg.pinSource = p
		case "pin-value":
			return fail("pin-value is refused: a PIN in a URI leaks through argv and logs; put it in a file (mode 0600) and use pin-source=/path/to/file")
		case "module-name":
			return fail("module-name is not supported; give the module's absolute path with module-path=")
		case "token", "serial", "object":
			return fail("%s is a path attribute: write it before \"?\", separated by \";\" (pkcs11:%s=…;…?module-path=…)", name, name)
		case "allow-host-kdf":
			switch strings.ToLower(v) {
			case "true":
				cfg.allowHostKDF = true
			case "false":
				cfg.allowHostKDF = false
			default:
				return fail("allow-host-kdf=%q, want true or false", v)
			}
		default:
			return fail("unknown query attribute %q; the query takes module-path=, pin-source= and allow-host-kdf=", name)
		}
	}
	if cfg.token == "" && cfg.serial == "" {
		return fail("no token selected: give token=<label> and/or serial=<serial>")
	}
	if cfg.modulePath == "" {
		return fail("module-path=<absolute path of the PKCS#11 module> is required")
	}
	return cfg, nil
}

// pinSourcePath accepts a file: URI without a host, or an absolute path.
func pinSourcePath(v string) (string, error) {
	p := v
	if strings.HasPrefix(v, "file:") {
		u, err := url.Parse(v)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.RawQuery != "" || u.Opaque != "" {
			return "", fmt.Errorf("pkcs11 uri: pin-source %q is not a local file: URI", v)
		}
		p = u.Path
	} else if strings.HasPrefix(v, "|") {
		return "", errors.New("pkcs11 uri: pin-source commands (|…) are not supported; give a file")
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("pkcs11 uri: pin-source %q is not an absolute path or file: URI", v)
	}
	return filepath.Clean(p), nil
}

// resolvePIN returns opts.PIN if set, else the content of the pin-source
// file without its trailing newline, read with the checks every secret file
// gets (internal/secretfile: owner and mode 0600 or 0400, size, one line).
// Errors name the file, never its content.
func resolvePIN(cfg *pkcs11Config, opts Options) (string, error) {
	if opts.PIN != "" {
		return opts.PIN, nil
	}
	if cfg.pinSource == "" {
		return "", errors.New("no PIN: add pin-source=<file> to the pkcs11 uri (or set Options.PIN)")
	}
	pin, err := secretfile.ReadLine(cfg.pinSource)
	if err != nil {
		return "", fmt.Errorf("read PIN from pin-source: %w", err)
	}
	return pin, nil
}
