package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/signaling/client/loadtest"
)

// Adaptive quality under load (issue 15): `vitrine load -simulcast` with
// viewers that send transport-wide feedback, some of them behind a link the
// test makes. A viewer behind a thin link must end on the lowest layer, and
// soon; a viewer on a good link must stay on the top layer throughout; a
// viewer behind a link that only loses packets at random (under 10%) must
// stay on the top layer too: random loss is not congestion.

// shapedLinkRate is the constrained viewers' link in TestAdaptiveLoad,
// shared by them: 600 kbit/s for each. One lowest layer (~250 kbit/s of
// video, ~70 kbit/s of Opus, headers) fits in a viewer's share, the middle
// one (~800 kbit/s) does not.
const (
	constrainedViewers = 3
	shapedLinkRate     = 600 * constrainedViewers // kbit/s
)

// TestAdaptiveLoad: 12 viewers of an OBS-like simulcast publisher (three
// layers, ~2.5 Mbit/s, ~800 and ~250 kbit/s), 3 of them in a network
// namespace behind a token bucket (tc tbf, 600 kbit/s each); 25 s measured.
// Every constrained viewer ends on the lowest layer and got its first
// packet of it within 5 s of its offer; every other viewer ends on the top
// layer without ever having left it, and loses under 0.5%.
func TestAdaptiveLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("a 25 s load run")
	}
	link := newShapedLink(t, fmt.Sprintf("%dkbit", shapedLinkRate))
	host := link.hostIP.String()
	a, base := testApp(t, func(c *Config) {
		// One address both sides reach: this side over loopback, the
		// namespace over the veth pair.
		c.HTTP = net.JoinHostPort(host, "0")
		c.WebRTC.ListenIP = host
		noLimits(c)
	})
	rep := adaptiveRun(t, "behind the token bucket", base, a.demo.Key, host, 12, 25*time.Second,
		"-netns", link.ns, "-netns-ip", link.nsIP.String(), "-netns-viewers", strconv.Itoa(constrainedViewers))
	t.Logf("the link's queue: %s", link.stats())
	checkTopViewers(t, rep)
	n := 0
	for _, v := range rep.Viewers {
		if v.Group != "constrained" {
			continue
		}
		n++
		if v.Layer != rep.Lowest {
			t.Errorf("constrained viewer %d ends on layer %d, want the lowest (%d); %d switches, loss %.1f%%",
				v.ID, v.Layer, rep.Lowest, v.Switches, 100*v.Loss)
		}
		if v.LowestMS < 0 || v.LowestMS > 5000 {
			t.Errorf("constrained viewer %d: first packet of the lowest layer %.0f ms after its offer, want within 5 s (-1: never)", v.ID, v.LowestMS)
		}
	}
	if n != constrainedViewers {
		t.Errorf("%d constrained viewers in the report, want %d", n, constrainedViewers)
	}
}

// TestAdaptiveRandomLoss: one viewer of 8 behind the TUN link of the
// isolation tests with 20 ms of delay and 5% random loss each way (its
// feedback loses 5% too), no rate limit; 15 s measured. Loss under 10%
// must not lower a viewer's estimate: it stays on the top layer, never
// switched, and so do the others.
func TestAdaptiveRandomLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("a 15 s load run")
	}
	if os.Geteuid() != 0 {
		t.Skip("a load run with a viewer in a network namespace needs root (the tool enters it with setns)")
	}
	link := newImpairedLink(t, 20*time.Millisecond, 0.05)
	host := link.hostIP.String()
	a, base := testApp(t, func(c *Config) {
		c.HTTP = net.JoinHostPort(host, "0")
		c.WebRTC.ListenIP = host
		noLimits(c)
	})
	rep := adaptiveRun(t, "with 5% random loss", base, a.demo.Key, host, 8, 15*time.Second,
		"-netns", link.ns, "-netns-ip", link.nsIP.String(), "-netns-viewers", "1")
	t.Logf("the link dropped %d of %d packets into the namespace, %d of %d out of it",
		link.toNS.dropped.Load(), link.toNS.dropped.Load()+link.toNS.passed.Load(),
		link.fromNS.dropped.Load(), link.fromNS.dropped.Load()+link.fromNS.passed.Load())
	checkTopViewers(t, rep)
	for _, v := range rep.Viewers {
		if v.Group != "constrained" {
			continue
		}
		if v.Layer != 0 || v.Switches != 0 {
			t.Errorf("the viewer with random loss ends on layer %d after %d switches (loss %.1f%%), want the top layer throughout",
				v.Layer, v.Switches, 100*v.Loss)
		}
		if v.Feedback == 0 {
			t.Error("the viewer with random loss sent no transport-wide feedback")
		}
	}
}

// adaptiveRun runs `vitrine load -simulcast -twcc` with n viewers on the
// server at base (reached from this side on host) and extra flags, and
// returns its report, logged.
func adaptiveRun(t *testing.T, what, base, key, host string, n int, window time.Duration, extra ...string) *loadtest.Report {
	t.Helper()
	args := append([]string{"-server", base, "-stream", "demo", "-key", key, "-local-ip", host, "-simulcast", "-twcc",
		"-viewers", strconv.Itoa(n), "-rate", "10", "-duration", window.String(), "-json"}, extra...)
	var stdout, stderr bytes.Buffer
	if err := load(args, &stdout, &stderr); err != nil {
		t.Fatalf("%s: %v\n%s", what, err, stderr.String())
	}
	var rep loadtest.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout.String())
	}
	var table bytes.Buffer
	_ = rep.WriteTable(&table)
	t.Logf("vitrine load %s, %s:\n%s", strings.Join(args, " "), what, table.String())
	for _, v := range rep.Viewers {
		t.Logf("viewer %2d %-13s layer %2d, %d switches, lowest layer after %6.0f ms, loss %6.3f%%, video %d/%d, %d feedback reports",
			v.ID, v.Group, v.Layer, v.Switches, v.LowestMS, 100*v.Loss, v.Received.Video, v.Expected.Video, v.Feedback)
	}
	if metrics, err := http.Get(base + "/metrics"); err == nil {
		var b bytes.Buffer
		_, _ = b.ReadFrom(metrics.Body)
		metrics.Body.Close()
		for _, line := range strings.Split(b.String(), "\n") {
			if strings.HasPrefix(line, "vitrine_layer_switches_total") || strings.HasPrefix(line, "vitrine_viewer_estimate_bps_sum") ||
				strings.HasPrefix(line, "vitrine_viewer_estimate_bps_count") {
				t.Log(line)
			}
		}
	}
	if rep.Joined != n || rep.Failed != 0 || rep.WithMedia != n {
		t.Fatalf("%s: %d joined, %d failed, %d got media of %d: %v", what, rep.Joined, rep.Failed, rep.WithMedia, n, rep.Errors)
	}
	if len(rep.Layers) != 3 {
		t.Fatalf("%s: %d layers in the report, want 3", what, len(rep.Layers))
	}
	if rep.Foreign != 0 {
		t.Errorf("%s: %d foreign payloads", what, rep.Foreign)
	}
	return &rep
}

// checkTopViewers asserts that every viewer on the good link ends on the
// top layer, never left it, and lost under 0.5%.
func checkTopViewers(t *testing.T, rep *loadtest.Report) {
	t.Helper()
	for _, v := range rep.Viewers {
		if v.Group == "constrained" {
			continue
		}
		if v.Layer != 0 || v.Switches != 0 {
			t.Errorf("unconstrained viewer %d ends on layer %d after %d switches, want the top layer throughout", v.ID, v.Layer, v.Switches)
		}
		if v.Loss >= healthyLossMax {
			t.Errorf("unconstrained viewer %d lost %.3f%%, want under %.1f%%", v.ID, 100*v.Loss, 100*healthyLossMax)
		}
	}
}

// shapedLink is a network namespace joined to this one by a veth pair
// (this side .1/30, the namespace's .2/30, from 198.18.0.0/15), with a
// token bucket on this side's end: what goes into the namespace is held to
// rate, with 20 kB of burst and up to 300 ms of queue. Removed when the
// test ends.
type shapedLink struct {
	t            *testing.T
	root         []string
	ns, hostVeth string
	hostIP, nsIP netip.Addr
}

// shapedPrefix names the namespaces of shaped links: the prefix, the pid of
// the test that made it, a random suffix that its veth names share.
const shapedPrefix = "vitrine-tbf-"

func shapedVeth(suffix string) (host, ns string) { return "vtb" + suffix + "h", "vtb" + suffix + "n" }

func newShapedLink(t *testing.T, rate string) *shapedLink {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("network namespaces are Linux's")
	}
	for _, cmd := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(cmd); err != nil {
			t.Skipf("no %s command (Debian: iproute2)", cmd)
		}
	}
	if os.Geteuid() != 0 {
		// The load tool enters the namespace itself (setns), which takes
		// root, not just a command run with sudo.
		t.Skip("a load run with viewers in a network namespace needs root")
	}
	l := &shapedLink{t: t}
	l.removeStale()
	var id [3]byte
	_, _ = rand.Read(id[:])
	suffix := hex.EncodeToString(id[:])
	l.ns = fmt.Sprintf("%s%d-%s", shapedPrefix, os.Getpid(), suffix)
	var nsVeth string
	l.hostVeth, nsVeth = shapedVeth(suffix)
	l.hostIP, l.nsIP = freeLinkAddresses(t)

	l.run("ip", "netns", "add", l.ns)
	t.Cleanup(func() { l.quiet("ip", "netns", "del", l.ns) })
	l.run("ip", "link", "add", l.hostVeth, "type", "veth", "peer", "name", nsVeth, "netns", l.ns)
	t.Cleanup(func() { l.quiet("ip", "link", "del", l.hostVeth) }) // the pair goes with it
	l.run("ip", "addr", "add", l.hostIP.String()+"/30", "dev", l.hostVeth)
	l.run("ip", "link", "set", l.hostVeth, "up")
	l.run("ip", "-n", l.ns, "addr", "add", l.nsIP.String()+"/30", "dev", nsVeth)
	l.run("ip", "-n", l.ns, "link", "set", nsVeth, "up")
	l.run("ip", "-n", l.ns, "link", "set", "lo", "up")
	l.run("tc", "qdisc", "replace", "dev", l.hostVeth, "root", "tbf", "rate", rate, "burst", "20kb", "latency", "300ms")
	return l
}

// removeStale removes what a shaped link's test killed before its cleanup
// left: namespaces whose test process is gone, and their veth pairs.
func (l *shapedLink) removeStale() {
	for _, st := range staleNamespaces(shapedPrefix) {
		hostVeth, _ := shapedVeth(st.suffix)
		l.quiet("ip", "link", "del", hostVeth)
		l.quiet("ip", "netns", "del", st.name)
		l.t.Logf("removed %s and %s, left by test process %d", st.name, hostVeth, st.pid)
	}
}

func (l *shapedLink) run(argv ...string) {
	l.t.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		l.t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
}

func (l *shapedLink) quiet(argv ...string) { _ = exec.Command(argv[0], argv[1:]...).Run() }

// stats is what the token bucket says it sent and dropped.
func (l *shapedLink) stats() string {
	out, err := exec.Command("tc", "-s", "qdisc", "show", "dev", l.hostVeth).CombinedOutput()
	if err != nil {
		return err.Error()
	}
	return strings.Join(slices.DeleteFunc(strings.Split(strings.TrimSpace(string(out)), "\n"), func(s string) bool { return strings.TrimSpace(s) == "" }), "; ")
}
