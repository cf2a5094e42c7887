package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestACME: with tls.acme_domains the real binary gets its certificate
// from a real ACME server, Debian's pebble, which checks the challenge by
// connecting back to Vitrine under the public name (resolved to this
// machine by pebble's test DNS). Vitrine then serves HTTPS under that
// certificate, plain HTTP on acme_http redirects to HTTPS, a name it was
// not told gets no certificate, and after a restart with the ACME server
// gone the cached certificate is still served.
func TestACME(t *testing.T) {
	pebble, dns := acmeBinary(t, "pebble"), acmeBinary(t, "pebble-challtestsrv")
	dir := t.TempDir()
	bin := filepath.Join(dir, "vitrine")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	const name = "shop.vitrine.test"
	// pebble's own HTTPS (its API) under a test CA; Vitrine trusts it by
	// SSL_CERT_FILE, as it would trust a private ACME server.
	apiCert, apiKey, apiPool := testCert(t, t.TempDir(), "127.0.0.1")
	acmePort, mgmtPort, dnsPort, dnsMgmtPort := freePort(t), freePort(t), freePort(t), freePort(t)
	httpsPort, httpPort := freePort(t), freePort(t)

	run := func(name string, env []string, args ...string) *exec.Cmd {
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = testLog{t}, testLog{t}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	run(dns, nil, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-dns01", fmt.Sprintf("127.0.0.1:%d", dnsPort),
		"-http01", "", "-https01", "", "-tlsalpn01", "", "-management", fmt.Sprintf("127.0.0.1:%d", dnsMgmtPort))
	pebbleConf := filepath.Join(dir, "pebble.json")
	conf, _ := json.Marshal(map[string]any{"pebble": map[string]any{
		"listenAddress": fmt.Sprintf("127.0.0.1:%d", acmePort), "managementListenAddress": fmt.Sprintf("127.0.0.1:%d", mgmtPort),
		"certificate": apiCert, "privateKey": apiKey,
		"httpPort": httpPort, "tlsPort": httpsPort, // where its checks connect: Vitrine's acme_http and https
	}})
	if err := os.WriteFile(pebbleConf, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	acme := run(pebble, []string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0"},
		"-config", pebbleConf, "-dnsserver", fmt.Sprintf("127.0.0.1:%d", dnsPort))
	api := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: apiPool}}}
	var root []byte
	eventually(t, "pebble's root certificate", 20*time.Second, func() bool {
		res, err := api.Get(fmt.Sprintf("https://127.0.0.1:%d/roots/0", mgmtPort))
		if err != nil {
			return false
		}
		defer res.Body.Close()
		root, _ = io.ReadAll(res.Body)
		return res.StatusCode == 200
	})
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(root) {
		t.Fatalf("pebble's root: %q", root)
	}

	data := filepath.Join(dir, "data")
	vitrineConf := filepath.Join(dir, "vitrine.yaml")
	if err := os.WriteFile(vitrineConf, []byte(fmt.Sprintf(`tls:
  acme_domains: [%s]
  acme_directory: https://127.0.0.1:%d/dir
  acme_http: 127.0.0.1:%d
`, name, acmePort, httpPort)), 0o600); err != nil {
		t.Fatal(err)
	}
	startVitrine := func() *exec.Cmd {
		return run(bin, []string{"SSL_CERT_FILE=" + apiCert, "VITRINE_LOG_LEVEL=warn"}, "-config", vitrineConf, "-data", data,
			"-http", fmt.Sprintf("127.0.0.1:%d", httpsPort), "-udp-port", "0", "-rtmp", "off", "-rtsp", "off")
	}
	srv := startVitrine()

	// A browser at https://shop.vitrine.test, which resolves to this machine.
	dial := &net.Dialer{Timeout: 5 * time.Second}
	browser := func(serverName string) *http.Client {
		return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: serverName},
			ForceAttemptHTTP2: true,
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return dial.DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", httpsPort))
			},
		}}
	}
	base := fmt.Sprintf("https://%s:%d", name, httpsPort)
	var serial string
	eventually(t, "HTTPS under a certificate from the ACME server", 60*time.Second, func() bool {
		res, err := browser(name).Get(base + "/healthz")
		if err != nil {
			t.Logf("GET %s/healthz: %v", base, err)
			return false
		}
		res.Body.Close()
		if res.StatusCode != 200 || res.ProtoMajor != 2 {
			t.Fatalf("GET /healthz: %d %s, want 200 over HTTP/2", res.StatusCode, res.Proto)
		}
		leaf := res.TLS.PeerCertificates[0]
		if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != name {
			t.Fatalf("certificate for %v, want %s", leaf.DNSNames, name)
		}
		serial = leaf.SerialNumber.String()
		return true
	})
	if _, err := os.Stat(filepath.Join(data, "acme", name)); err != nil {
		t.Errorf("the certificate is not cached in the data directory: %v", err)
	}

	// Another name on the same address gets no certificate.
	if res, err := browser("other.vitrine.test").Get(fmt.Sprintf("https://other.vitrine.test:%d/healthz", httpsPort)); err == nil {
		res.Body.Close()
		t.Errorf("a name not in tls.acme_domains was served: %d", res.StatusCode)
	}

	// Plain HTTP on acme_http redirects to HTTPS.
	plain := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/studio?stream=demo", httpPort), nil)
	req.Host = name
	res, err := plain.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if loc := res.Header.Get("Location"); res.StatusCode/100 != 3 || !strings.HasPrefix(loc, "https://"+name+"/studio") {
		t.Errorf("plain HTTP: %d Location %q, want a redirect to https://%s/studio", res.StatusCode, loc, name)
	}

	// With the ACME server gone, a restarted Vitrine serves the cached certificate.
	acme.Process.Kill()
	acme.Wait()
	srv.Process.Kill()
	srv.Wait()
	startVitrine()
	eventually(t, "HTTPS after a restart without the ACME server", 20*time.Second, func() bool {
		res, err := browser(name).Get(base + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		if got := res.TLS.PeerCertificates[0].SerialNumber.String(); got != serial {
			t.Fatalf("after the restart: certificate %s, want the cached %s", got, serial)
		}
		return res.StatusCode == 200
	})
}

// acmeBinary finds one of Debian's pebble binaries; on CI a missing one
// fails the test (.ci/test.sh installs pebble).
func acmeBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed in CI: .ci/test.sh installs Debian's pebble", name)
		}
		t.Skipf("%s not installed (apt-get install pebble)", name)
	}
	return p
}
