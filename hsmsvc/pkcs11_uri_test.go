package hsmsvc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mrkrepl/mrkrepl/internal/secretfile"
)

const testModule = "/usr/lib/softhsm/libsofthsm2.so"

func TestParsePKCS11URI(t *testing.T) {
	good := []struct {
		uri  string
		want pkcs11Config
	}{
		{"pkcs11:token=region-a?module-path=" + testModule + "&pin-source=/etc/mrkrepl/pin",
			pkcs11Config{modulePath: testModule, token: "region-a", rskLabel: DefaultRSKLabel, pinSource: "/etc/mrkrepl/pin"}},
		{"PKCS11:serial=0abb0b993b814b5c?module-path=" + testModule,
			pkcs11Config{modulePath: testModule, serial: "0abb0b993b814b5c", rskLabel: DefaultRSKLabel}},
		{"pkcs11:token=My%20Token;serial=42;object=rsk-2?module-path=/opt/hsm/../hsm/lib.so&pin-source=file:///run/secrets/pin&allow-host-kdf=true",
			pkcs11Config{modulePath: "/opt/hsm/lib.so", token: "My Token", serial: "42", rskLabel: "rsk-2", pinSource: "/run/secrets/pin", allowHostKDF: true}},
		{"pkcs11:token=a?allow-host-kdf=FALSE&module-path=" + testModule + "&pin-source=file:/p",
			pkcs11Config{modulePath: testModule, token: "a", rskLabel: DefaultRSKLabel, pinSource: "/p"}},
		{"pkcs11:token=a%3Bb%3Fc?module-path=" + testModule,
			pkcs11Config{modulePath: testModule, token: "a;b?c", rskLabel: DefaultRSKLabel}},
	}
	for _, tc := range good {
		got, err := parsePKCS11URI(tc.uri)
		if err != nil {
			t.Errorf("parse %q: %v", tc.uri, err)
			continue
		}
		if *got != tc.want {
			t.Errorf("parse %q = %+v, want %+v", tc.uri, *got, tc.want)
		}
	}

	mod := "?module-path=" + testModule
	bad := []struct{ uri, want string }{
		{"pkcs11", `does not start with "pkcs11:"`},
		{"soft:token=a" + mod, `does not start with "pkcs11:"`},
		{"pkcs11:" + mod, "no token selected"},
		{"pkcs11:object=rsk" + mod, "no token selected"},
		{"pkcs11:token=a", "module-path=<absolute path of the PKCS#11 module> is required"},
		{"pkcs11:token=a?module-path=libsofthsm2.so", "not an absolute path"},
		{"pkcs11:token=a;token=b" + mod, `attribute "token" given twice`},
		{"pkcs11:token=a" + mod + "&module-path=/x.so", `attribute "module-path" given twice`},
		{"pkcs11:token=" + mod, `attribute "token" is empty`},
		{"pkcs11:token" + mod, `path attribute "token" is not name=value`},
		{"pkcs11:token=a;;serial=1" + mod, `path attribute "" is not name=value`},
		{"pkcs11:token=a%zz" + mod, `attribute "token": bad percent-encoding`},
		{"pkcs11:token=a;model=SoftHSM" + mod, `path attribute "model" is not supported`},
		{"pkcs11:token=a;slot-id=1" + mod, `path attribute "slot-id" is not supported`},
		{"pkcs11:token=a;id=%01" + mod, `path attribute "id" is not supported`},
		{"pkcs11:token=a;colour=blue" + mod, `unknown path attribute "colour"`},
		{"pkcs11:token=a" + mod + "&pin-value=1234", "pin-value is refused"},
		{"pkcs11:token=a" + mod + "&module-name=softhsm2", "module-name is not supported"},
		{"pkcs11:token=a" + mod + "&allow-host-kdf=yes", `allow-host-kdf="yes", want true or false`},
		{"pkcs11:token=a" + mod + "&max-sessions=4", `unknown query attribute "max-sessions"`},
		{"pkcs11:token=a" + mod + "&pin-source=pin.txt", "not an absolute path or file: URI"},
		{"pkcs11:token=a" + mod + "&pin-source=file://host/pin", "not a local file: URI"},
		{"pkcs11:token=a" + mod + "&pin-source=%7C/bin/getpin", "pin-source commands"},
		{"pkcs11:token=a" + mod + "#frag", "a fragment"},
		{"pkcs11:token=a;module-path=" + testModule, "module-path is a query attribute"},
		{"pkcs11:token=a;pin-source=/p" + mod, "pin-source is a query attribute"},
		{"pkcs11:" + mod + "&token=a", "token is a path attribute"},
	}
	for _, tc := range bad {
		_, err := parsePKCS11URI(tc.uri)
		if err == nil {
			t.Errorf("parse %q succeeded", tc.uri)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parse %q: error %q does not contain %q", tc.uri, err, tc.want)
		}
		if strings.Contains(err.Error(), "1234") {
			t.Errorf("parse %q: error %q repeats the pin-value", tc.uri, err)
		}
	}
}

func TestResolvePIN(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		file, content string
		mode          os.FileMode
		want          string
	}{
		{"plain", "s3cret", 0o600, "s3cret"},
		{"newline", "s3cret\n", 0o600, "s3cret"},
		{"crlf", "s3cret\r\n", 0o400, "s3cret"},
		{"spaces", " s3 cret \n", 0o600, " s3 cret "},
	} {
		cfg := &pkcs11Config{pinSource: write(tc.file, tc.content, tc.mode)}
		pin, err := resolvePIN(cfg, Options{})
		if err != nil || pin != tc.want {
			t.Errorf("%s: resolvePIN = %q, %v; want %q", tc.file, pin, err, tc.want)
		}
	}
	// A PIN file readable by group or others is refused (as ssh refuses
	// such a private key), like every secret file.
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		cfg := &pkcs11Config{pinSource: write(fmt.Sprintf("readable-%o", mode), "s3cret\n", mode)}
		if _, err := resolvePIN(cfg, Options{}); !errors.Is(err, secretfile.ErrPermissions) {
			t.Errorf("pin-source mode %04o: err = %v, want a permissions refusal", mode, err)
		}
	}
	// Options.PIN wins over the file.
	cfg := &pkcs11Config{pinSource: filepath.Join(dir, "plain")}
	if pin, err := resolvePIN(cfg, Options{PIN: "override"}); err != nil || pin != "override" {
		t.Errorf("Options.PIN: %q, %v", pin, err)
	}
	for _, tc := range []struct{ name, content, want string }{
		{"empty", "", "the file is empty"},
		{"only-newline", "\n", "the file is empty"},
		{"two-lines", "s3cret\nsecond\n", "more than one line"},
		{"huge", strings.Repeat("x", maxPINFileSize+1), "longer than"},
	} {
		cfg := &pkcs11Config{pinSource: write(tc.name, tc.content, 0o600)}
		_, err := resolvePIN(cfg, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error %q shows the file's content", tc.name, err)
		}
	}
	if _, err := resolvePIN(&pkcs11Config{pinSource: dir}, Options{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as pin-source: %v", err)
	}
	if _, err := resolvePIN(&pkcs11Config{}, Options{}); err == nil || !strings.Contains(err.Error(), "no PIN") {
		t.Errorf("no pin-source: %v", err)
	}
}
