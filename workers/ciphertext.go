package workers

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// A ciphertext blob names the key and version that made it, so any region
// holding the key can open it:
//
//	0x01 ‖ key id (16 bytes, the hex digits of mrk-… decoded) ‖ version (4 bytes BE) ‖ HSM output
//
// The HSM output is AES-256-GCM's nonce ‖ ciphertext ‖ tag; its AAD is
// blobAADLabel ‖ the 21-byte header ‖ the caller's AAD, so the header cannot
// be swapped.
const (
	blobFormat    = 0x01
	blobHeaderLen = 1 + 16 + 4
	blobAADLabel  = "mrkrepl/1 data\x00"
)

var errBadBlob = errors.New("malformed ciphertext blob")

func blobHeader(keyID string, version uint32) ([]byte, error) {
	raw, err := hex.DecodeString(keyID[len("mrk-"):])
	if err != nil || len(raw) != 16 {
		return nil, fmt.Errorf("bad key id %q", keyID)
	}
	h := make([]byte, 0, blobHeaderLen)
	h = append(h, blobFormat)
	h = append(h, raw...)
	return binary.BigEndian.AppendUint32(h, version), nil
}

func parseBlobHeader(blob []byte) (keyID string, version uint32, err error) {
	if len(blob) < blobHeaderLen+12+16 || blob[0] != blobFormat {
		return "", 0, errBadBlob
	}
	version = binary.BigEndian.Uint32(blob[17:21])
	if version == 0 {
		return "", 0, errBadBlob
	}
	return "mrk-" + hex.EncodeToString(blob[1:17]), version, nil
}

func blobAAD(header, aad []byte) []byte {
	out := make([]byte, 0, len(blobAADLabel)+len(header)+len(aad))
	out = append(out, blobAADLabel...)
	out = append(out, header...)
	return append(out, aad...)
}
