package kmsapi

import (
	"errors"
	"fmt"
	"net/http"
)

// Error types (the "__type" of an error reply), as the AWS SDKs parse them
// into their typed errors (aws-sdk-go-v2/service/kms/types).
const (
	ErrNotFound                 = "NotFoundException"
	ErrInvalidState             = "KMSInvalidStateException"
	ErrInvalidCiphertext        = "InvalidCiphertextException"
	ErrIncorrectKey             = "IncorrectKeyException"
	ErrAccessDenied             = "AccessDeniedException"
	ErrValidation               = "ValidationException"
	ErrAlreadyExists            = "AlreadyExistsException"
	ErrDisabled                 = "DisabledException"
	ErrInvalidKeyUsage          = "InvalidKeyUsageException"
	ErrUnsupportedOperation     = "UnsupportedOperationException"
	ErrInvalidArn               = "InvalidArnException"
	ErrInvalidAliasName         = "InvalidAliasNameException"
	ErrInvalidMarker            = "InvalidMarkerException"
	ErrMalformedPolicyDocument  = "MalformedPolicyDocumentException"
	ErrConflict                 = "ConflictException"
	ErrInternal                 = "KMSInternalException"
	ErrUnknownOperation         = "UnknownOperationException"
	ErrSerialization            = "SerializationException"
	ErrIncompleteSignature      = "IncompleteSignatureException"
	ErrInvalidSignature         = "InvalidSignatureException"
	ErrUnrecognizedClient       = "UnrecognizedClientException"
	ErrMissingAuthenticationTok = "MissingAuthenticationTokenException"
)

// Error is an error reply of the KMS API: its type, message and HTTP
// status. Handlers return it; any other error is answered as
// KMSInternalException (500) with no detail.
type Error struct {
	Type    string
	Message string
	Status  int // 0: StatusOf(Type)
}

func (e *Error) Error() string { return e.Type + ": " + e.Message }

// Errorf returns an *Error of type typ.
func Errorf(typ, format string, args ...any) *Error {
	return &Error{Type: typ, Message: fmt.Sprintf(format, args...)}
}

// StatusOf is the HTTP status AWS KMS answers an error type with: 400 for
// every client error, as the KMS API reference lists them (AccessDenied
// included), 403 for a request without any signature, 500 for internal
// errors.
func StatusOf(typ string) int {
	switch typ {
	case ErrInternal:
		return http.StatusInternalServerError
	case ErrMissingAuthenticationTok:
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

// AsError returns err as an *Error, or nil if it is not one.
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return nil
}
