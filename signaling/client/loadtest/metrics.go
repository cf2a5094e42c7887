package loadtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// serverSample is what the tool reads off the server's /metrics: its CPU
// time and the packets it has sent to viewers, summed over labels.
type serverSample struct {
	cpu     float64
	egress  float64
	present bool
}

// scrape reads the server's Prometheus text. It only sums plain samples by
// name, which is all it needs, so it takes no exposition-format dependency.
func scrape(ctx context.Context, url, token string) (serverSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return serverSample{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return serverSample{}, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return serverSample{}, fmt.Errorf("GET %s: %s", url, res.Status)
	}
	sums := sumMetrics(io.LimitReader(res.Body, 64<<20), "process_cpu_seconds_total", "vitrine_egress_packets_total")
	s := serverSample{cpu: sums["process_cpu_seconds_total"], egress: sums["vitrine_egress_packets_total"]}
	_, hasCPU := sums["process_cpu_seconds_total"]
	_, hasEgress := sums["vitrine_egress_packets_total"]
	if !hasCPU || !hasEgress {
		return s, fmt.Errorf("%s has no process_cpu_seconds_total or vitrine_egress_packets_total", url)
	}
	s.present = true
	return s, nil
}

// sumMetrics adds up the samples of the named metrics in Prometheus text.
func sumMetrics(r io.Reader, names ...string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(line, '{'); i >= 0 && i < len(name) {
			name = line[:i]
			j := strings.LastIndexByte(line, '}')
			if j < i {
				continue
			}
			rest = strings.TrimSpace(line[j+1:])
		}
		for _, want := range names {
			if name != want {
				continue
			}
			field, _, _ := strings.Cut(strings.TrimSpace(rest), " ") // drop a timestamp
			if v, err := strconv.ParseFloat(field, 64); err == nil {
				out[name] += v
			}
		}
	}
	return out
}
