// Package kmsapi serves the AWS KMS JSON 1.1 protocol (POST /,
// Content-Type application/x-amz-json-1.1, X-Amz-Target
// TrentService.<Operation>) with AWS Signature Version 4 verified in full,
// so that the AWS SDKs and CLI can be pointed at a mrkrepl region
// (docs/KMS-API.md). It knows nothing of keys: a Handler runs the
// operations for the principal a valid signature proves.
package kmsapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mrkrepl/mrkrepl/internal/authz"
	"github.com/prometheus/client_golang/prometheus"
)

// ContentType is the media type of every request and reply.
const ContentType = "application/x-amz-json-1.1"

// TargetPrefix is X-Amz-Target's prefix before the operation's name.
const TargetPrefix = "TrentService."

// MaxBody bounds a request body: a policy (32 KiB) JSON-escaped in
// PutKeyPolicy or CreateKey fits, so does a 4 KiB plaintext in base64.
const MaxBody = 128 << 10

// Handler runs the operations of the API.
type Handler interface {
	// ServeKMS runs op (the operation's name, e.g. "Encrypt") for p with
	// the request's JSON body and returns the reply, marshalled as JSON.
	// An *Error is the client's; any other error is answered as
	// KMSInternalException without detail.
	ServeKMS(ctx context.Context, p authz.Principal, op string, body []byte) (any, error)
}

// Config configures a Server.
type Config struct {
	Region      string // the region whose scope signatures must name
	Credentials Credentials
	Handler     Handler
	// Operations are those Handler implements; every other operation of
	// AWS KMS (AWSOperations) is answered UnsupportedOperationException,
	// any other name UnknownOperationException.
	Operations []string
	// Ready answers /readyz (nil: always ready).
	Ready      func(context.Context) error
	Registerer prometheus.Registerer // nil registers no metrics
	Logger     *slog.Logger          // nil discards
	Now        func() time.Time      // default time.Now
	MaxSkew    time.Duration         // default DefaultMaxSkew
	// Timeout bounds each operation (default 20 s).
	Timeout time.Duration
}

// Server is the HTTP side of the API. It is an http.Handler.
type Server struct {
	cfg    Config
	verify *Verifier
	log    *slog.Logger
	met    *metrics

	mu   sync.Mutex   // guards http and down: Serve and Shutdown may race
	http *http.Server // set by Serve
	down bool         // Shutdown was called
}

// New returns a Server for cfg and registers its metrics.
func New(cfg Config) (*Server, error) {
	if cfg.Region == "" || cfg.Credentials == nil || cfg.Handler == nil {
		return nil, errors.New("kmsapi: region, credentials and handler are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 20 * time.Second
	}
	met, err := newMetrics(cfg.Registerer, cfg.Region, cfg.Operations)
	if err != nil {
		return nil, fmt.Errorf("kmsapi: %w", err)
	}
	return &Server{
		cfg:    cfg,
		verify: &Verifier{Region: cfg.Region, Service: "kms", Credentials: cfg.Credentials, Now: cfg.Now, MaxSkew: cfg.MaxSkew},
		log:    cfg.Logger.With("component", "kms", "region", cfg.Region),
		met:    met,
	}, nil
}

// CheckListener refuses to serve plain HTTP on anything but loopback: over
// any other network the signed requests (and the plaintexts and data keys
// in the replies) would travel in the clear.
func CheckListener(l net.Listener, tlsConfig *tls.Config) error {
	if tlsConfig != nil {
		return nil
	}
	addr, ok := l.Addr().(*net.TCPAddr)
	if !ok || !addr.IP.IsLoopback() {
		return fmt.Errorf("kmsapi: plain HTTP is only served on a loopback address, not %s: configure TLS (a certificate and key) or listen on 127.0.0.1", l.Addr())
	}
	return nil
}

// Serve serves on l (with TLS when tlsConfig is set) until Shutdown. It
// refuses plain HTTP on a listener that is not loopback (CheckListener).
func (s *Server) Serve(l net.Listener, tlsConfig *tls.Config) error {
	if err := CheckListener(l, tlsConfig); err != nil {
		return err
	}
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	if tlsConfig != nil {
		hs.TLSConfig = tlsConfig.Clone()
		l = tls.NewListener(l, hs.TLSConfig)
	}
	s.mu.Lock()
	if s.down {
		s.mu.Unlock()
		_ = l.Close()
		return nil
	}
	s.http = hs
	s.mu.Unlock()
	err := hs.Serve(l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops serving, waiting for requests in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	hs := s.http
	s.down = true
	s.mu.Unlock()
	if hs == nil {
		return nil
	}
	return hs.Shutdown(ctx)
}

// ServeHTTP answers the API at "/" and the health endpoints /healthz
// (the process runs) and /readyz (Config.Ready).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/healthz" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
		return
	case r.URL.Path == "/readyz" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.cfg.Ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
			if err := s.cfg.Ready(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	start := time.Now()
	op := opLabel(r.Header.Get("X-Amz-Target"), s.cfg.Operations)
	resp, err := s.serve(r)
	outcome := s.reply(w, op, resp, err)
	s.met.requests.WithLabelValues(op, outcome).Inc()
	s.met.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (s *Server) serve(r *http.Request) (resp any, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("panic: %v", v)
		}
	}()
	if r.URL.Path != "/" {
		return nil, &Error{Type: ErrUnknownOperation, Message: "the KMS API is served at /, not " + r.URL.Path, Status: http.StatusNotFound}
	}
	if r.Method != http.MethodPost {
		return nil, &Error{Type: ErrUnknownOperation, Message: "the KMS API takes POST requests", Status: http.StatusMethodNotAllowed}
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, MaxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &Error{Type: ErrValidation, Message: fmt.Sprintf("request body larger than %d bytes", MaxBody), Status: http.StatusRequestEntityTooLarge}
		}
		return nil, Errorf(ErrSerialization, "request body not read: %v", err)
	}
	p, err := s.verify.Verify(r.Context(), r, body)
	if err != nil {
		return nil, err
	}
	if ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";"); strings.TrimSpace(ct) != ContentType {
		return nil, Errorf(ErrSerialization, "Content-Type must be %s, not %q", ContentType, r.Header.Get("Content-Type"))
	}
	target := r.Header.Get("X-Amz-Target")
	name, ok := strings.CutPrefix(target, TargetPrefix)
	switch {
	case !ok || !slices.Contains(AWSOperations, name):
		return nil, Errorf(ErrUnknownOperation, "unknown operation %q (X-Amz-Target must be %s<Operation>)", target, TargetPrefix)
	case !slices.Contains(s.cfg.Operations, name):
		return nil, Errorf(ErrUnsupportedOperation, "%s is not supported by mrkrepl (docs/KMS-API.md)", name)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.Timeout)
	defer cancel()
	return s.cfg.Handler.ServeKMS(ctx, p, name, body)
}

// reply writes resp or err and returns the outcome label.
func (s *Server) reply(w http.ResponseWriter, op string, resp any, err error) string {
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("X-Amzn-RequestId", requestID())
	if err == nil {
		b, merr := json.Marshal(resp)
		if merr == nil {
			_, _ = w.Write(b)
			return "ok"
		}
		err = fmt.Errorf("reply not encoded: %w", merr)
	}
	e := AsError(err)
	if e == nil {
		s.log.Error("request failed", "op", op, "err", err)
		e = &Error{Type: ErrInternal, Message: "internal error"}
	}
	status := e.Status
	if status == 0 {
		status = StatusOf(e.Type)
	}
	h.Set("X-Amzn-ErrorType", e.Type)
	b, _ := json.Marshal(map[string]string{"__type": e.Type, "message": e.Message})
	w.WriteHeader(status)
	_, _ = w.Write(b)
	return outcomeOf(e.Type, status)
}

// Outcomes of the metrics' outcome label.
var outcomes = []string{"ok", "unauthenticated", "denied", "client_error", "server_error"}

func outcomeOf(typ string, status int) string {
	switch typ {
	case ErrMissingAuthenticationTok, ErrIncompleteSignature, ErrInvalidSignature, ErrUnrecognizedClient:
		return "unauthenticated"
	case ErrAccessDenied:
		return "denied"
	}
	if status >= 500 {
		return "server_error"
	}
	return "client_error"
}

// opLabel bounds the op label: an operation served, "unsupported" for
// another of AWS KMS's, "other" for anything else.
func opLabel(target string, served []string) string {
	name, ok := strings.CutPrefix(target, TargetPrefix)
	switch {
	case ok && slices.Contains(served, name):
		return name
	case ok && slices.Contains(AWSOperations, name):
		return "unsupported"
	}
	return "other"
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer, region string, ops []string) (*metrics, error) {
	cl := prometheus.Labels{"region": region}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mrkrepl", Subsystem: "kms", Name: "requests_total", ConstLabels: cl,
			Help: "KMS API requests, by operation and outcome (ok, unauthenticated, denied, client_error, server_error).",
		}, []string{"op", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "mrkrepl", Subsystem: "kms", Name: "request_duration_seconds", ConstLabels: cl,
			Help:    "KMS API request latency from the request's headers to its reply, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"op"}),
	}
	labels := append(slices.Clone(ops), "unsupported", "other")
	for _, op := range labels {
		for _, o := range outcomes {
			m.requests.WithLabelValues(op, o)
		}
		m.duration.WithLabelValues(op)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// AWSOperations are the operations of AWS KMS (TrentService).
var AWSOperations = []string{
	"CancelKeyDeletion", "ConnectCustomKeyStore", "CreateAlias", "CreateCustomKeyStore", "CreateGrant",
	"CreateKey", "Decrypt", "DeleteAlias", "DeleteCustomKeyStore", "DeleteImportedKeyMaterial",
	"DeriveSharedSecret", "DescribeCustomKeyStores", "DescribeKey", "DisableKey", "DisableKeyRotation",
	"DisconnectCustomKeyStore", "EnableKey", "EnableKeyRotation", "Encrypt", "GenerateDataKey",
	"GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateDataKeyWithoutPlaintext",
	"GenerateMac", "GenerateRandom", "GetKeyPolicy", "GetKeyRotationStatus", "GetParametersForImport",
	"GetPublicKey", "ImportKeyMaterial", "ListAliases", "ListGrants", "ListKeyPolicies", "ListKeyRotations",
	"ListKeys", "ListResourceTags", "ListRetirableGrants", "PutKeyPolicy", "ReEncrypt", "ReplicateKey",
	"RetireGrant", "RevokeGrant", "RotateKeyOnDemand", "ScheduleKeyDeletion", "Sign", "TagResource",
	"UntagResource", "UpdateAlias", "UpdateCustomKeyStore", "UpdateKeyDescription", "UpdatePrimaryRegion",
	"Verify", "VerifyMac",
}

// Decode parses a request body strictly into v: malformed JSON is a
// SerializationException, a field the operation does not have a
// ValidationException naming it.
func Decode(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return Errorf(ErrValidation, "unknown field %s", f)
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return Errorf(ErrValidation, "field %s: expected %s, got JSON %s", te.Field, te.Type, te.Value)
		}
		return Errorf(ErrSerialization, "request body is not a JSON object of the operation's fields: %v", err)
	}
	if dec.More() {
		return Errorf(ErrSerialization, "request body has data after its JSON object")
	}
	return nil
}
