package authz

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "regenerate testdata/context-vectors.json")

const vectorsFile = "testdata/context-vectors.json"

// contextVector is one case of testdata/context-vectors.json. Keys and values
// are hex so that vectors can hold invalid UTF-8.
type contextVector struct {
	Name     string      `json:"name"`
	Context  [][2]string `json:"context"`            // [key hex, value hex] pairs, in no particular order
	Encoding string      `json:"encoding,omitempty"` // hex; empty with no error: zero bytes
	Error    string      `json:"error,omitempty"`    // a substring of the expected error
}

// handEncode is the independent generator: the bytes of the spec in
// EncodeContext's doc, built without calling it.
func handEncode(pairs [][2]string) string {
	if len(pairs) == 0 {
		return ""
	}
	keys := make([]string, 0, len(pairs))
	m := map[string]string{}
	for _, p := range pairs {
		keys = append(keys, p[0])
		m[p[0]] = p[1]
	}
	sort.Strings(keys) // byte-wise
	var b bytes.Buffer
	b.WriteString("mrkrepl/1 encryption-context")
	b.WriteByte(0)
	binary.Write(&b, binary.BigEndian, uint16(len(keys)))
	for _, k := range keys {
		binary.Write(&b, binary.BigEndian, uint16(len(k)))
		b.WriteString(k)
		binary.Write(&b, binary.BigEndian, uint16(len(m[k])))
		b.WriteString(m[k])
	}
	return hex.EncodeToString(b.Bytes())
}

func generateVectors() []contextVector {
	n := func(count int, value string) [][2]string {
		var p [][2]string
		for i := range count {
			p = append(p, [2]string{fmt.Sprintf("k%02d", i), value})
		}
		return p
	}
	x := strings.Repeat
	good := []contextVector{
		{Name: "empty context encodes as nothing"},
		{Name: "one pair", Context: [][2]string{{"tenant", "acme"}}},
		{Name: "byte-wise key order", Context: [][2]string{{"b", "2"}, {"é", "5"}, {"aa", "4"}, {"B", "1"}, {"a", "3"}}},
		{Name: "empty value", Context: [][2]string{{"purpose", ""}, {"tenant", "acme"}}},
		{Name: "UTF-8 keys and values", Context: [][2]string{{"客户", "株式会社"}, {"emoji", "🔑"}}},
		{Name: "64 pairs", Context: n(64, "v")},
		{Name: "longest key and value, 8192 bytes in all", Context: [][2]string{{x("a", 2048), x("v", 2048)}, {x("b", 2048), x("w", 2048)}}},
	}
	for i := range good {
		good[i].Encoding = handEncode(good[i].Context)
	}
	bad := []contextVector{
		{Name: "65 pairs", Context: n(65, "v"), Error: "65 pairs, more than 64"},
		{Name: "empty key", Context: [][2]string{{"", "v"}}, Error: "empty key"},
		{Name: "key too long", Context: [][2]string{{x("k", 2049), "v"}}, Error: "2049 bytes, more than 2048"},
		{Name: "value too long", Context: [][2]string{{"k", x("v", 2049)}}, Error: `value of key "k": 2049 bytes, more than 2048`},
		{Name: "too large in all", Context: n(5, x("v", 1637)), Error: "8200 bytes of keys and values, more than 8192"},
		{Name: "key not UTF-8", Context: [][2]string{{"k\xff", "v"}}, Error: "not valid UTF-8"},
		{Name: "value truncated UTF-8", Context: [][2]string{{"k", "caf\xc3"}}, Error: `value of key "k": not valid UTF-8`},
		{Name: "value with a surrogate", Context: [][2]string{{"k", "\xed\xa0\x80"}}, Error: "not valid UTF-8"},
		{Name: "first bad pair in key order is reported", Context: [][2]string{{"z", "\xff"}, {"a", x("v", 2049)}}, Error: `value of key "a": 2049 bytes`},
	}
	all := append(good, bad...)
	for i := range all {
		for j, p := range all[i].Context {
			all[i].Context[j] = [2]string{hex.EncodeToString([]byte(p[0])), hex.EncodeToString([]byte(p[1]))}
		}
	}
	return all
}

func TestContextVectors(t *testing.T) {
	want, err := json.MarshalIndent(generateVectors(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, '\n')
	if *update {
		if err := os.WriteFile(vectorsFile, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from the generator (run go test -update)", vectorsFile)
	}
	var vectors []contextVector
	if err := json.Unmarshal(got, &vectors); err != nil {
		t.Fatal(err)
	}
	var good, bad int
	for _, v := range vectors {
		ec := map[string]string{}
		for _, p := range v.Context {
			k, err1 := hex.DecodeString(p[0])
			val, err2 := hex.DecodeString(p[1])
			if err1 != nil || err2 != nil {
				t.Fatalf("%s: bad hex", v.Name)
			}
			ec[string(k)] = string(val)
		}
		enc, err := EncodeContext(ec)
		verr := ValidateContext(ec)
		if v.Error != "" {
			bad++
			if err == nil || !errors.Is(err, ErrInvalidContext) || !strings.Contains(err.Error(), v.Error) {
				t.Errorf("%s: error %v, want one wrapping ErrInvalidContext and containing %q", v.Name, err, v.Error)
			}
			if verr == nil || verr.Error() != err.Error() {
				t.Errorf("%s: ValidateContext says %v, EncodeContext %v", v.Name, verr, err)
			}
			continue
		}
		good++
		if err != nil || verr != nil {
			t.Errorf("%s: %v / %v", v.Name, err, verr)
		} else if hex.EncodeToString(enc) != v.Encoding {
			t.Errorf("%s: encoding\n\t%x\nwant\n\t%s", v.Name, enc, v.Encoding)
		}
	}
	if good < 3 || bad < 6 {
		t.Errorf("%d positive and %d negative vectors, want at least 3 and 6", good, bad)
	}
	if enc, err := EncodeContext(nil); err != nil || len(enc) != 0 {
		t.Errorf("nil context: %x, %v", enc, err)
	}
}
