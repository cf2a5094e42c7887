package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/signaling/client"
)

const metricsToken = "metrics-token-0123456789"

// liveShow runs what an operator's dashboard is about: the demo stream live
// from a pion creator, two viewers, a shopper who sees a card, buys and
// confirms. It returns the app and the base URL.
func liveShow(t *testing.T, edit func(*Config)) (*app, string) {
	t.Helper()
	c := testClip(t)
	a, base := testApp(t, edit)
	product := overlay.Product{SKU: "ops-1", Title: "Ops mug", PriceMinor: 1500, Currency: "EUR", Stock: 10, Active: true}
	if _, err := a.store.CreateProduct(context.Background(), product); err != nil {
		t.Fatal(err)
	}
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	sent := &sentSet{}
	publish(t, api, base, "demo", a.demo.Key, c, sent)
	viewers := []*testViewer{watch(t, api, base, "demo", "v1", sent), watch(t, api, base, "demo", "v2", sent)}
	for _, v := range viewers {
		eventually(t, v.name+" gets video", 10*time.Second, func() bool { return v.count("video") > 30 })
	}
	buyer := shop(t, api, base, "demo", "buyer")
	if code, m, _ := postJSON(t, base+"/api/v1/streams/demo/cues", a.demo.Key, map[string]any{"type": "card.show", "sku": "ops-1"}); code != 201 {
		t.Fatalf("card.show: %d %v", code, m)
	}
	if code, m, _ := postJSON(t, base+"/api/v1/streams/demo/cues", a.demo.Key, map[string]any{"type": "sale.start", "sku": "ops-1", "price_minor": 1200, "units": 5, "duration_s": 300}); code != 201 {
		t.Fatalf("sale.start: %d %v", code, m)
	}
	buyer.send(t, map[string]any{"type": "buy", "sku": "ops-1", "qty": 1, "key": "ops-test-buy-1"})
	r := buyer.find(t, "buy.result", nil)["result"].(map[string]any)
	if r["outcome"] != "reserved" {
		t.Fatalf("buy: %v", r)
	}
	buyer.send(t, map[string]any{"type": "confirm", "order_id": r["order"].(map[string]any)["id"]})
	buyer.find(t, "confirm.result", nil)
	return a, base
}

// scrape reads /metrics at url with the bearer token (if any).
func scrape(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestMetricsListenerAndToken: metrics.listen moves /metrics off the HTTP
// port; metrics.token makes it require the bearer token.
func TestMetricsListenerAndToken(t *testing.T) {
	_, base := testApp(t, nil)
	if code, body := scrape(t, base+"/metrics", ""); code != 200 || !strings.Contains(body, "vitrine_build_info") {
		t.Errorf("default /metrics: %d", code)
	}

	a, base := testApp(t, func(c *Config) { c.Metrics.Listen = "127.0.0.1:0"; c.Metrics.Token = metricsToken })
	murl := "http://" + a.metricsListener.Addr().String() + "/metrics"
	if code, _ := scrape(t, base+"/metrics", metricsToken); code != 404 {
		t.Errorf("/metrics on the HTTP port with a separate listener: %d, want 404", code)
	}
	if code, _ := scrape(t, murl, ""); code != 401 {
		t.Errorf("/metrics without the token: %d, want 401", code)
	}
	if code, _ := scrape(t, murl, "wrong"); code != 401 {
		t.Errorf("/metrics with a wrong token: %d, want 401", code)
	}
	if code, body := scrape(t, murl, metricsToken); code != 200 || !strings.Contains(body, "vitrine_stream_state") {
		t.Errorf("/metrics with the token: %d", code)
	}
	// Go's profiles: on the private listener, behind the same token, never
	// on the public port.
	pprof := "http://" + a.metricsListener.Addr().String() + "/debug/pprof/"
	if code, _ := scrape(t, pprof+"heap", ""); code != 401 {
		t.Errorf("heap profile without the token: %d, want 401", code)
	}
	if code, body := scrape(t, pprof+"goroutine?debug=1", metricsToken); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Errorf("goroutine profile with the token: %d", code)
	}
	if code, _ := scrape(t, base+"/debug/pprof/heap", metricsToken); code == 200 {
		t.Errorf("a profile is served on the public HTTP port")
	}
	if code, body := scrape(t, base+"/version", ""); code != 200 || !strings.Contains(body, `"commit"`) {
		t.Errorf("/version: %d %s", code, body)
	}

	_, base = testApp(t, func(c *Config) { c.Metrics.Token = metricsToken })
	if code, _ := scrape(t, base+"/metrics", ""); code != 401 {
		t.Errorf("/metrics on the HTTP port without the token: %d, want 401", code)
	}
	if code, _ := scrape(t, base+"/metrics", metricsToken); code != 200 {
		t.Errorf("/metrics on the HTTP port with the token: %d", code)
	}
}

// repoFile is a path from the repository root.
func repoFile(name string) string { return filepath.Join("..", "..", name) }

// promBinary finds Debian's prometheus or promtool; on CI a missing one
// fails the test (.ci/test.sh installs them).
func promBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (apt-get install prometheus)", name)
		}
		t.Skipf("%s not installed (apt-get install prometheus)", name)
	}
	return p
}

// exported lists the metric families in a Prometheus text scrape.
func exported(scrape string) map[string]bool {
	names := map[string]bool{}
	for _, line := range strings.Split(scrape, "\n") {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			names[strings.Fields(rest)[0]] = true
		}
	}
	return names
}

var metricName = regexp.MustCompile(`\b(?:vitrine|go|process)_[a-z0-9_]+`)

// dashboardQueries returns every PromQL expression of the Grafana dashboard:
// panel targets and template variable queries.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(repoFile("configs/grafana/vitrine.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Type  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	var exprs []string
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		switch q := v.Query.(type) {
		case string:
			exprs = append(exprs, q)
		case map[string]any:
			if s, ok := q["query"].(string); ok {
				exprs = append(exprs, s)
			}
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("dashboard has %d queries", len(exprs))
	}
	return exprs
}

// checkDashboard: every metric a dashboard query names is in the scrape.
// Only the names for which check is true are checked: the cluster's
// metrics exist only on a node of a cluster (TestCluster checks those).
func checkDashboard(t *testing.T, scraped string, check func(name string) bool) {
	t.Helper()
	have := exported(scraped)
	for _, expr := range dashboardQueries(t) {
		names := metricName.FindAllString(expr, -1)
		if len(names) == 0 {
			t.Errorf("dashboard query names no metric: %s", expr)
		}
		for _, n := range names {
			if !check(n) {
				continue
			}
			base := n
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, suffix); ok && have[b] {
					base = b
				}
			}
			if !have[base] {
				t.Errorf("dashboard query uses %s, which Vitrine does not export: %s", n, expr)
			}
		}
	}
}

// TestDashboardQueriesExist checks the Grafana dashboard against a live
// scrape of a running show.
func TestDashboardQueriesExist(t *testing.T) {
	_, base := liveShow(t, nil)
	time.Sleep(1500 * time.Millisecond) // a Receiver Report each way
	_, body := scrape(t, base+"/metrics", "")
	checkDashboard(t, body, func(name string) bool { return !strings.HasPrefix(name, "vitrine_cluster_") })
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// promQuery runs an instant query and returns the first sample's value.
func promQuery(t *testing.T, prom, query string) (float64, bool) {
	t.Helper()
	res, err := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return 0, false
	}
	defer res.Body.Close()
	var out struct {
		Status string
		Data   struct {
			Result []struct {
				Value []any
			}
		}
	}
	if json.NewDecoder(res.Body).Decode(&out) != nil || out.Status != "success" || len(out.Data.Result) == 0 {
		return 0, false
	}
	s, _ := out.Data.Result[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	return v, err == nil
}

// TestPrometheus is issue 6's acceptance run: promtool accepts a live scrape
// and the alert rules, and Debian's Prometheus, scraping a running show
// through the separate, token-protected metrics listener, sees the viewers
// and the ingest bitrate.
func TestPrometheus(t *testing.T) {
	prometheus := promBinary(t, "prometheus")
	promtool := promBinary(t, "promtool")
	a, _ := liveShow(t, func(c *Config) { c.Metrics.Listen = "127.0.0.1:0"; c.Metrics.Token = metricsToken })
	target := a.metricsListener.Addr().String()

	_, body := scrape(t, "http://"+target+"/metrics", metricsToken)
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = strings.NewReader(body)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	rules, _ := filepath.Abs(repoFile("configs/alerts.yml"))
	if out, err := exec.Command(promtool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	// The rules fire on the series they are meant for, and not on others.
	if out, err := exec.Command(promtool, "test", "rules", "testdata/alerts_test.yml").CombinedOutput(); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}

	dir := t.TempDir()
	port := freePort(t)
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: vitrine
    authorization:
      credentials: %q
    static_configs:
      - targets: [%q]
`, rules, metricsToken, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	var logs bytes.Buffer
	cmd := exec.Command(prometheus, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		fmt.Sprintf("--web.listen-address=127.0.0.1:%d", port))
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	prom := fmt.Sprintf("http://127.0.0.1:%d", port)

	var viewers, bitrate float64
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		viewers, _ = promQuery(t, prom, `sum(vitrine_viewers{stream="demo"})`)
		bitrate, _ = promQuery(t, prom, `sum(rate(vitrine_stream_ingest_bytes_total{stream="demo",kind="video"}[5s])) * 8`)
		if viewers == 3 && bitrate > 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if viewers != 3 {
		t.Errorf("Prometheus sees %v viewers of demo, want 3", viewers)
	}
	if bitrate <= 0 {
		t.Errorf("Prometheus sees ingest bitrate %v", bitrate)
	}
	t.Logf("Prometheus: %v viewers, video ingest %.0f bit/s", viewers, bitrate)
	if up, _ := promQuery(t, prom, `up{job="vitrine"}`); up != 1 {
		t.Errorf("up = %v", up)
	}

	// VITRINE_SCREENSHOTS=dir: keep the show running a minute and photograph
	// Prometheus's graph page with the dashboard's main queries.
	if dir := os.Getenv("VITRINE_SCREENSHOTS"); dir != "" {
		screenshots(t, prom, dir)
	}
}

// screenshots photographs Prometheus's graph page (headless Chromium) with
// the main dashboard panels' queries over the data of this run.
func screenshots(t *testing.T, prom, dir string) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("screenshots need chromium: %v", err)
	}
	time.Sleep(60 * time.Second)
	pages := map[string][]string{
		"prometheus-media.png": {
			`sum by (stream) (vitrine_viewers)`,
			`sum by (stream, kind) (rate(vitrine_stream_ingest_bytes_total[15s])) * 8`,
			`rate(vitrine_stream_ingest_frames_total[15s])`,
			`histogram_quantile(0.99, sum by (le) (rate(vitrine_stream_forward_seconds_bucket[15s])))`,
			`vitrine_stream_viewer_loss_ratio`,
		},
		"prometheus-commerce.png": {
			`histogram_quantile(0.95, sum by (le) (rate(vitrine_join_seconds_bucket{kind="video"}[1m])))`,
			`sum(vitrine_overlay_messages_total{type="card.show"})`,
			`sum(vitrine_buy_attempts_total)`,
			`vitrine_orders_confirmed_total`,
			`sum by (currency) (vitrine_revenue_minor_total) / 100`,
		},
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, exprs := range pages {
		q := url.Values{}
		for i, e := range exprs {
			q.Set(fmt.Sprintf("g%d.expr", i), e)
			q.Set(fmt.Sprintf("g%d.tab", i), "0")
			q.Set(fmt.Sprintf("g%d.range_input", i), "1m")
		}
		out, _ := filepath.Abs(filepath.Join(dir, file))
		args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync",
			"--hide-scrollbars", "--window-size=1400,3600", "--virtual-time-budget=15000",
			"--user-data-dir=" + t.TempDir(), "--screenshot=" + out, prom + "/graph?" + q.Encode()}
		if b, err := exec.Command(chromium, args...).CombinedOutput(); err != nil {
			t.Errorf("chromium: %v\n%s", err, b)
		}
		t.Logf("screenshot %s", out)
	}
}
