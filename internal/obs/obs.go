// Package obs is what every mrkrepl process shares to be observed: its
// Prometheus registry (with build information), the HTTP endpoints
// /metrics, /healthz and /readyz, the trust bundle's RSK expiry collector,
// and the slog logger built from --log-level and --log-format.
//
// Metric names follow docs/METRICS.md: namespace mrkrepl, one subsystem per
// component, base units, low-cardinality labels (never key ids). Nothing
// here uses the global Prometheus registry: every collector is registered
// on a registry the caller passes in.
//
// Serve is safe to call several times in one process (the demo serves one
// endpoint per component); each call has its own listener and mux.
package obs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go and process collectors and
// mrkrepl_build_info.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		NewBuildInfoCollector(),
	)
	return reg
}

// ReadyFunc reports whether a process can do its work; a nil error means
// ready. It is called on every /readyz request with a context bounded by
// ReadyTimeout.
type ReadyFunc func(ctx context.Context) error

// ReadyTimeout bounds one readiness check.
const ReadyTimeout = 3 * time.Second

// Handler returns the mux that Serve serves:
//
//	GET /metrics  the registry, in the Prometheus exposition format
//	GET /healthz  200 "ok" while the process runs (liveness)
//	GET /readyz   200 "ready" if ready returns nil, else 503 with the reason
func Handler(reg *prometheus.Registry, ready ReadyFunc) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
			defer cancel()
			if err := ready(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "mrkrepl: /metrics /healthz /readyz")
	})
	return mux
}

// Serve listens on addr and serves Handler(reg, ready) until ctx ends. It
// returns the bound address (useful with port 0). A nil log discards.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, ready ReadyFunc, log *slog.Logger) (string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("metrics listener: %w", err)
	}
	srv := &http.Server{Handler: Handler(reg, ready), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr().String(), nil
}
