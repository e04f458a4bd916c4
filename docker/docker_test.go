package docker_test

import (
	"encoding/json"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/mrkrepl/mrkrepl/internal/config"
	"go.yaml.in/yaml/v3"
)

// regions are the regions of the compose deployment.
var regions = []string{"us-east-1", "eu-west-1", "ap-southeast-2"}

type service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Networks    []string          `yaml:"networks"`
	DependsOn   yaml.Node         `yaml:"depends_on"`
	Ports       []string          `yaml:"ports"`
	Profiles    []string          `yaml:"profiles"`
	Secrets     secretRefs        `yaml:"secrets"`
	NetworkMode string            `yaml:"network_mode"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

// secretRef is a service's use of a secret, in the short form (its name)
// or the long one.
type secretRef struct {
	Source string `yaml:"source"`
	UID    string `yaml:"uid"`
	GID    string `yaml:"gid"`
	Mode   *int   `yaml:"mode"`
}

type secretRefs []secretRef

func (s *secretRefs) UnmarshalYAML(n *yaml.Node) error {
	var items []yaml.Node
	if err := n.Decode(&items); err != nil {
		return err
	}
	for _, it := range items {
		var r secretRef
		if it.Kind == yaml.ScalarNode {
			r.Source = it.Value
		} else if err := it.Decode(&r); err != nil {
			return err
		}
		*s = append(*s, r)
	}
	return nil
}

// names returns the secrets' names.
func (s secretRefs) names() []string {
	var out []string
	for _, r := range s {
		out = append(out, r.Source)
	}
	return out
}

type composeFile struct {
	Name     string             `yaml:"name"`
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
	Networks map[string]any     `yaml:"networks"`
	Secrets  map[string]struct {
		Environment string `yaml:"environment"`
		File        string `yaml:"file"`
	} `yaml:"secrets"`
}

// serviceKeys are the compose keys the file may use; a typo is an error.
var serviceKeys = []string{
	"image", "build", "command", "environment", "volumes", "networks", "depends_on",
	"ports", "profiles", "healthcheck", "restart", "secrets", "network_mode",
}

func readCompose(t *testing.T) *composeFile {
	t.Helper()
	b, err := os.ReadFile("compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var raw struct {
		Services map[string]map[string]any `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	for name, s := range raw.Services {
		for k := range s {
			if !slices.Contains(serviceKeys, k) {
				t.Errorf("compose.yaml: service %s: unexpected key %q", name, k)
			}
		}
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	return &c
}

// dependsOn returns the services a service depends on (list or map form).
func (s service) dependsOn(t *testing.T) []string {
	t.Helper()
	switch s.DependsOn.Kind {
	case 0:
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := s.DependsOn.Decode(&l); err != nil {
			t.Fatal(err)
		}
		return l
	case yaml.MappingNode:
		var m map[string]struct {
			Condition string `yaml:"condition"`
		}
		if err := s.DependsOn.Decode(&m); err != nil {
			t.Fatal(err)
		}
		for name, d := range m {
			if !slices.Contains([]string{"service_started", "service_healthy", "service_completed_successfully"}, d.Condition) {
				t.Errorf("depends_on %s: condition %q", name, d.Condition)
			}
		}
		return slices.Sorted(maps.Keys(m))
	}
	t.Fatalf("depends_on: unexpected YAML kind %v", s.DependsOn.Kind)
	return nil
}

// mount splits a volume entry "source:target[:mode]".
func mount(v string) (src, dst string) {
	parts := strings.Split(v, ":")
	if len(parts) < 2 {
		return "", v
	}
	return parts[0], parts[1]
}

// TestCompose checks the compose file's internal references: services,
// networks, volumes and mounted files exist; each region's worker talks
// only to its own region's NATS servers; the proxies and Prometheus reach
// what they need; the configuration files parse strictly.
func TestCompose(t *testing.T) {
	c := readCompose(t)
	if len(c.Services) == 0 {
		t.Fatal("no services")
	}
	usedVolumes, usedNetworks, usedSecrets := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for name, s := range c.Services {
		if s.Image == "" && s.Build == nil {
			t.Errorf("service %s: neither image nor build", name)
		}
		for _, d := range s.dependsOn(t) {
			if _, ok := c.Services[d]; !ok {
				t.Errorf("service %s depends on %s, which is not a service", name, d)
			}
		}
		for _, n := range s.Networks {
			usedNetworks[n] = true
			if _, ok := c.Networks[n]; !ok {
				t.Errorf("service %s: network %s is not declared", name, n)
			}
		}
		for _, v := range s.Volumes {
			src, _ := mount(v)
			switch {
			case strings.HasPrefix(src, "./"), strings.HasPrefix(src, "../"):
				if _, err := os.Stat(src); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			case src != "":
				usedVolumes[src] = true
				if _, ok := c.Volumes[src]; !ok {
					t.Errorf("service %s: volume %s is not declared", name, src)
				}
			}
		}
		for _, sec := range s.Secrets.names() {
			usedSecrets[sec] = true
			if _, ok := c.Secrets[sec]; !ok {
				t.Errorf("service %s: secret %s is not declared", name, sec)
			}
		}
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("service %s publishes %s beyond localhost", name, p)
			}
		}
	}
	for v := range c.Volumes {
		if !usedVolumes[v] {
			t.Errorf("volume %s is declared but unused", v)
		}
	}
	for n := range c.Secrets {
		if !usedSecrets[n] {
			t.Errorf("secret %s is declared but unused", n)
		}
	}
	for n := range c.Networks {
		if !usedNetworks[n] {
			t.Errorf("network %s is declared but unused", n)
		}
	}
	shares := func(a, b string) bool {
		for _, n := range c.Services[a].Networks {
			if slices.Contains(c.Services[b].Networks, n) {
				return true
			}
		}
		return false
	}
	// reachable checks that every host of a comma-separated NATS URL list
	// is a service on a network the client joins, of the wanted region.
	reachable := func(client, urls, region string) {
		t.Helper()
		for u := range strings.SplitSeq(urls, ",") {
			pu, err := url.Parse(u)
			if err != nil {
				t.Errorf("%s: %q: %v", client, u, err)
				continue
			}
			host := pu.Hostname()
			if _, ok := c.Services[host]; !ok {
				t.Errorf("%s connects to %s, which is not a service", client, host)
			} else if !shares(client, host) {
				t.Errorf("%s connects to %s but shares no network with it", client, host)
			}
			if !strings.HasPrefix(host, "nats-"+region+"-") {
				t.Errorf("%s connects to %s, not a NATS server of %s", client, host, region)
			}
		}
	}

	// Workers: one per region, its own region's servers only.
	workerCfg := config.DefaultWorker()
	if err := config.Load("config/worker.yaml", &workerCfg); err != nil {
		t.Fatal(err)
	}
	for _, r := range regions {
		name := "worker-" + r
		w, ok := c.Services[name]
		if !ok {
			t.Errorf("no service %s", name)
			continue
		}
		env := w.Environment
		if env["MRKREPL_REGION"] != r || !strings.Contains(env["MRKREPL_HSM"], "token=mrkrepl-"+r+"?") {
			t.Errorf("%s: region or token of another region: %v", name, env)
		}
		if env["BOOTSTRAP_REGIONS"] != strings.Join(regions, " ") {
			t.Errorf("%s: BOOTSTRAP_REGIONS = %q", name, env["BOOTSTRAP_REGIONS"])
		}
		reachable(name, env["MRKREPL_NATS_URL"], r)
		for _, other := range regions {
			if other != r && slices.Contains(w.Networks, "region-"+other) {
				t.Errorf("%s joins the network of %s: regions must not reach each other", name, other)
			}
		}
		if !slices.Contains(w.Volumes, "tokens-"+r+":/var/lib/mrkrepl/tokens") {
			t.Errorf("%s: its token volume is not tokens-%s", name, r)
		}
		if !slices.Contains(w.Command, "worker") || !slices.Contains(w.Volumes, "./config/worker.yaml:/etc/mrkrepl/worker.yaml:ro") {
			t.Errorf("%s: command %v does not run the worker with config/worker.yaml", name, w.Command)
		}
		if w.Healthcheck == nil || !strings.Contains(strings.Join(w.Healthcheck.Test, " "), workerCfg.Metrics.Addr+"/readyz") {
			t.Errorf("%s: healthcheck does not probe /readyz on %s", name, workerCfg.Metrics.Addr)
		}
		for _, n := range "abc" {
			if _, ok := c.Services["nats-"+r+"-"+string(n)]; !ok {
				t.Errorf("region %s: no server nats-%s-%c", r, r, n)
			}
		}
	}

	// Proxies: every region, from config/proxy.yaml.
	proxyCfg := config.DefaultProxy()
	if err := config.Load("config/proxy.yaml", &proxyCfg); err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(maps.Keys(proxyCfg.Regions)); !slices.Equal(got, slices.Sorted(slices.Values(regions))) {
		t.Errorf("config/proxy.yaml regions %v, want %v", got, regions)
	}
	proxies := 0
	for name, s := range c.Services {
		if !strings.HasPrefix(name, "proxy-") {
			continue
		}
		proxies++
		for r, n := range proxyCfg.Regions {
			reachable(name, n.URL, r)
		}
		if !slices.Contains(s.Volumes, "bundle:/var/lib/mrkrepl/bundle:ro") {
			t.Errorf("%s: the bundle volume is not mounted read-only", name)
		}
	}
	if proxies != 2 {
		t.Errorf("%d proxies, want 2", proxies)
	}

	// Prometheus scrapes every worker and proxy on their metrics port.
	prom := readPrometheus(t)
	targets := map[string]bool{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, tgt := range st.Targets {
				targets[tgt] = true
				host, _, _ := strings.Cut(tgt, ":")
				if host == "localhost" {
					continue
				}
				if _, ok := c.Services[host]; !ok {
					t.Errorf("prometheus scrapes %s, which is not a service", tgt)
				} else if !shares("prometheus", host) {
					t.Errorf("prometheus shares no network with %s", host)
				}
			}
		}
	}
	for name := range c.Services {
		want := ""
		switch {
		case strings.HasPrefix(name, "worker-"):
			want = name + workerCfg.Metrics.Addr
		case strings.HasPrefix(name, "proxy-"):
			want = name + proxyCfg.Metrics.Addr
		}
		if want != "" && !targets[want] {
			t.Errorf("prometheus does not scrape %s", want)
		}
	}
	for _, f := range prom.RuleFiles {
		if !slices.Contains(c.Services["prometheus"].Volumes, "./prometheus/"+f+":/etc/prometheus/"+f+":ro") {
			t.Errorf("rule file %s is not mounted into prometheus", f)
		}
	}
	// Grafana gets the provisioning and the dashboard.
	for _, want := range []string{"./grafana/provisioning:/etc/grafana/provisioning:ro", "./grafana/dashboards:/var/lib/grafana/dashboards:ro"} {
		if !slices.Contains(c.Services["grafana"].Volumes, want) {
			t.Errorf("grafana does not mount %s", want)
		}
	}
}

type prometheusFile struct {
	RuleFiles     []string `yaml:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `yaml:"job_name"`
		StaticConfigs []struct {
			Targets []string `yaml:"targets"`
		} `yaml:"static_configs"`
	} `yaml:"scrape_configs"`
}

func readPrometheus(t *testing.T) *prometheusFile {
	t.Helper()
	b, err := os.ReadFile("prometheus/prometheus.yml")
	if err != nil {
		t.Fatal(err)
	}
	var p prometheusFile
	if err := yaml.Unmarshal(b, &p); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	return &p
}

// TestPromtool runs promtool on the Prometheus config, the rules and the
// rules' unit tests. Without promtool it skips, unless
// MRKREPL_REQUIRE_PROMTOOL=1 (CI) makes that a failure.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool not found (Debian: apt-get install prometheus)"
		if os.Getenv("MRKREPL_REQUIRE_PROMTOOL") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	for _, args := range [][]string{
		{"check", "config", "prometheus/prometheus.yml"},
		{"check", "rules", "prometheus/alerts.yml"},
		{"test", "rules", "prometheus/alerts_test.yml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestDashboardParses checks the dashboard's structure; the metric names in
// its queries are checked by TestQueriesNameRealMetrics.
func TestDashboardParses(t *testing.T) {
	var d struct {
		UID        string           `json:"uid"`
		Panels     []map[string]any `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
	}
	b, err := os.ReadFile("grafana/dashboards/mrkrepl.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if d.UID == "" || len(d.Panels) < 10 {
		t.Fatalf("dashboard: uid %q, %d panels", d.UID, len(d.Panels))
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	ids := map[float64]bool{}
	for _, p := range d.Panels {
		id, _ := p["id"].(float64)
		if ids[id] {
			t.Errorf("panel id %v used twice", id)
		}
		ids[id] = true
		for _, e := range exprs(p) {
			for _, m := range varRE.FindAllStringSubmatch(e, -1) {
				if !vars[m[1]] {
					t.Errorf("panel %q uses $%s, which is not a dashboard variable", p["title"], m[1])
				}
			}
		}
	}
	// The pipeline per region pair: the pair panels use both variables.
	pairPanels := 0
	for _, p := range d.Panels {
		for _, e := range exprs(p) {
			if strings.Contains(e, `src=~"$src"`) && strings.Contains(e, `dst=~"$dst"`) {
				pairPanels++
				break
			}
		}
	}
	if pairPanels < 6 {
		t.Errorf("%d panels per region pair, want at least 6", pairPanels)
	}
}

var varRE = regexp.MustCompile(`\$([a-z_]+)`)

// exprs returns every "expr" string under v (panels, targets).
func exprs(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && k == "expr" {
				out = append(out, s)
			} else {
				out = append(out, exprs(val)...)
			}
		}
	case []any:
		for _, e := range x {
			out = append(out, exprs(e)...)
		}
	}
	return out
}

// TestEntrypointSyntax checks the entrypoint with the shell's parser.
func TestEntrypointSyntax(t *testing.T) {
	for _, sh := range []string{"sh", "bash", "dash"} {
		p, err := exec.LookPath(sh)
		if err != nil {
			continue
		}
		if out, err := exec.Command(p, "-n", "entrypoint.sh").CombinedOutput(); err != nil {
			t.Errorf("%s -n entrypoint.sh: %v\n%s", sh, err, out)
		}
	}
}

// TestDockerfile checks what the image promises: multi-stage, cgo build,
// SoftHSM2, a non-root user, the entrypoint and files it copies exist.
func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	if n := len(regexp.MustCompile(`(?m)^FROM `).FindAllString(df, -1)); n < 2 {
		t.Errorf("%d stages, want a multi-stage build", n)
	}
	for _, want := range []string{"CGO_ENABLED=1", "softhsm2", "USER 10001", "ENTRYPOINT", "./cmd/mrkrepl"} {
		if !strings.Contains(df, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?m)^USER (root|0)\b`).MatchString(df) {
		t.Error("the image runs as root")
	}
	for _, m := range regexp.MustCompile(`(?m)^COPY (docker/\S+)`).FindAllStringSubmatch(df, -1) {
		if _, err := os.Stat(filepath.Join("..", m[1])); err != nil {
			t.Errorf("Dockerfile copies %s: %v", m[1], err)
		}
	}
}
