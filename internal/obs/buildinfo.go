package obs

import (
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Version is the release version, set at build time with
//
//	go build -ldflags "-X github.com/mrkrepl/mrkrepl/internal/obs.Version=v1.2.3"
//
// When empty, the main module's version from the build information is used
// ("(devel)" for a build from a work tree).
var Version string

// BuildInfo describes the running binary.
type BuildInfo struct {
	Version   string // Version, or the main module's version
	Revision  string // VCS revision, "unknown" if not stamped
	GoVersion string // runtime.Version()
}

// ReadBuildInfo returns the running binary's build information.
func ReadBuildInfo() BuildInfo {
	bi := BuildInfo{Version: Version, Revision: "unknown", GoVersion: runtime.Version()}
	if info, ok := debug.ReadBuildInfo(); ok {
		if bi.Version == "" {
			bi.Version = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				bi.Revision = s.Value
			}
		}
	}
	if bi.Version == "" {
		bi.Version = "unknown"
	}
	return bi
}

// NewBuildInfoCollector returns the collector of mrkrepl_build_info: a
// gauge that is always 1, labelled with version, revision and goversion.
func NewBuildInfoCollector() prometheus.Collector {
	bi := ReadBuildInfo()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "mrkrepl",
		Name:      "build_info",
		Help:      "Always 1; the labels say which build is running (version, VCS revision, Go version).",
		ConstLabels: prometheus.Labels{
			"version": bi.Version, "revision": bi.Revision, "goversion": bi.GoVersion,
		},
	})
	g.Set(1)
	return g
}

// SemVer is Version in the form SemVer 2.0 wants (what a NATS micro
// service's version must be): without Go's "v" (v1.2.3 is 1.2.3, a
// pseudo-version v0.0.0-20250101-abcdef is 0.0.0-20250101-abcdef), and
// "0.0.0-devel" for a build from a work tree ("(devel)") or any version
// that is not SemVer.
func (bi BuildInfo) SemVer() string {
	if v := strings.TrimPrefix(bi.Version, "v"); semVer.MatchString(v) {
		return v
	}
	return "0.0.0-devel"
}

// semVer is SemVer 2.0's regular expression (semver.org), as nats.go's
// micro package checks it.
var semVer = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)
