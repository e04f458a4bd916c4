package workers

import "testing"

// FuzzBlobHeader: the ciphertext-blob header parser never panics, and a
// header it accepts round-trips through blobHeader.
func FuzzBlobHeader(f *testing.F) {
	h, _ := blobHeader("mrk-00112233445566778899aabbccddeeff", 1)
	f.Add(append(h, make([]byte, 28)...))
	f.Add([]byte{})
	f.Add([]byte{0x02})
	f.Fuzz(func(t *testing.T, blob []byte) {
		keyID, version, err := parseBlobHeader(blob)
		if err != nil {
			return
		}
		h, err := blobHeader(keyID, version)
		if err != nil {
			t.Fatalf("parsed key id %q does not make a header: %v", keyID, err)
		}
		if string(h) != string(blob[:blobHeaderLen]) {
			t.Fatal("header does not round-trip")
		}
	})
}
