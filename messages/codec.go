package messages

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// codec holds the CBOR modes of the package. The options are constants, so
// building the modes cannot fail in practice; if it ever did (a library
// change), every entry point reports err instead of the package panicking at
// init.
type codec struct {
	// enc is RFC 8949 core deterministic encoding: shortest heads, map keys
	// sorted bytewise, no indefinite lengths. Nil byte strings encode as an
	// empty byte string, never as null.
	enc cbor.EncMode
	// strict decodes the payload and every part of the envelope: no tags,
	// no indefinite lengths, no duplicate or unknown map keys, exact
	// (case-sensitive) field names, valid UTF-8, shallow nesting.
	strict cbor.DecMode
	// tagged is strict with tags allowed, for the outer COSE_Sign1 tag
	// (18) only; its content is decoded with strict.
	tagged cbor.DecMode
	err    error
}

var cdc = newCodec()

func newCodec() codec {
	var c codec
	encOpts := cbor.CoreDetEncOptions()
	encOpts.NilContainers = cbor.NilContainerAsEmpty
	encOpts.OmitEmpty = cbor.OmitEmptyGoValue
	encOpts.TagsMd = cbor.TagsForbidden
	enc, err := encOpts.EncMode()
	if err != nil {
		c.err = fmt.Errorf("messages: cbor encoder: %w", err)
		return c
	}
	decOpts := cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
		FieldNameMatching: cbor.FieldNameMatchingCaseSensitive,
		UTF8:              cbor.UTF8RejectInvalid,
		// A payload needs three levels of maps (message → body →
		// properties), its largest map has 10 pairs, and the envelope is
		// an array of four (the smallest map and level limits the library
		// accepts); the longest arrays are a lifecycle message's version
		// list (MaxVersions) and a hand-over's replica list (MaxReplicas).
		MaxNestedLevels:  4,
		MaxArrayElements: max(MaxVersions, MaxReplicas),
		MaxMapPairs:      16,
	}
	strict, err := decOpts.DecMode()
	if err != nil {
		c.err = fmt.Errorf("messages: cbor decoder: %w", err)
		return c
	}
	decOpts.TagsMd = cbor.TagsAllowed
	decOpts.MaxNestedLevels = 8
	tagged, err := decOpts.DecMode()
	if err != nil {
		c.err = fmt.Errorf("messages: cbor envelope decoder: %w", err)
		return c
	}
	c.enc, c.strict, c.tagged = enc, strict, tagged
	return c
}

var errCodec = errors.New("messages: cbor codec unavailable")

// ready returns the codec's construction error, if any.
func (c *codec) ready() error {
	if c.err != nil {
		return c.err
	}
	if c.enc == nil || c.strict == nil || c.tagged == nil {
		return errCodec
	}
	return nil
}

// encodePayload returns the canonical encoding of m.
func encodePayload(m *Message) ([]byte, error) {
	return cdc.enc.Marshal(m)
}
