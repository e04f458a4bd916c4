package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"

	"github.com/mrkrepl/mrkrepl/internal/config"
	"github.com/mrkrepl/mrkrepl/workers"
)

// kmsConfig opens the worker's KMS API listener of the configuration's
// kms section (nil when kms.listen is empty).
func kmsConfig(c config.KMS) (*workers.KMSConfig, error) {
	if c.Listen == "" {
		if c.TLSCert != "" || c.TLSKey != "" {
			return nil, errors.New("kms.tls_cert and kms.tls_key need kms.listen")
		}
		return nil, nil
	}
	var tlsConfig *tls.Config
	switch {
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return nil, errors.New("kms.tls_cert and kms.tls_key go together")
	case c.TLSCert != "":
		cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("kms tls: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	l, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return nil, fmt.Errorf("kms.listen: %w", err)
	}
	return &workers.KMSConfig{Listener: l, TLS: tlsConfig, AccountID: c.AccountID, ARNPartition: c.ARNPartition}, nil
}
