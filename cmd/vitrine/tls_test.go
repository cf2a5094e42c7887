package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// testCert makes a CA and a certificate it signed for name, written as PEM
// files in dir; it returns the files and the CA pool.
func testCert(t *testing.T, dir, name string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Vitrine test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	if ip := net.ParseIP(name); ip != nil {
		leaf.DNSNames, leaf.IPAddresses = nil, []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
	if err := os.WriteFile(certFile, chain, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return certFile, keyFile, pool
}

// TestHTTPS: with tls.cert_file and tls.key_file the HTTP port serves
// HTTPS with HTTP/2 under the certificate's name, and a viewer watches
// over it; plain HTTP on that port gets nowhere.
func TestHTTPS(t *testing.T) {
	const name = "shop.vitrine.test"
	certFile, keyFile, pool := testCert(t, t.TempDir(), name)
	a, plain := testApp(t, func(c *Config) { c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile })
	_, port, _ := net.SplitHostPort(a.listener.Addr().String())
	base := "https://" + name + ":" + port
	// name resolves to this machine, as --host-resolver-rules does in Chromium.
	dial := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dial.DialContext(ctx, network, strings.Replace(addr, name, "127.0.0.1", 1))
		},
	}
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	res, err := hc.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.ProtoMajor != 2 {
		t.Fatalf("GET /healthz over TLS: %d %s, want 200 over HTTP/2", res.StatusCode, res.Proto)
	}
	if a.baseURL() != "https://localhost:"+port {
		t.Errorf("printed base URL %s", a.baseURL())
	}
	if res, err := http.Get(plain + "/healthz"); err == nil {
		res.Body.Close()
		if res.StatusCode == 200 {
			t.Error("plain HTTP answered 200 on the HTTPS port")
		}
	}

	// A viewer's WHEP over HTTPS.
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := api.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	for _, kind := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := pc.AddTransceiverFromKind(kind, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			t.Fatal(err)
		}
	}
	offer, _ := pc.CreateOffer(nil)
	gathered := webrtc.GatheringCompletePromise(pc)
	if err := pc.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	req, _ := http.NewRequest("POST", base+"/whep/demo", strings.NewReader(pc.LocalDescription().SDP))
	req.Header.Set("Content-Type", "application/sdp")
	res, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 201 || res.ProtoMajor != 2 {
		t.Fatalf("WHEP over HTTPS: %d %s %s", res.StatusCode, res.Proto, answer)
	}
	connected := make(chan struct{})
	pc.OnConnectionStateChange(func(s webrtc.PeerConnectionState) {
		if s == webrtc.PeerConnectionStateConnected {
			close(connected)
		}
	})
	if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: string(answer)}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-connected:
	case <-time.After(10 * time.Second):
		t.Fatal("the viewer did not connect")
	}
}

// TestTLSConfigErrors: half a TLS configuration is refused at start.
func TestTLSConfigErrors(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, e := range []func(string) string{
		env("VITRINE_TLS_CERT_FILE", "/x/cert.pem"),
		env("VITRINE_TLS_CERT_FILE", "/x/cert.pem", "VITRINE_TLS_KEY_FILE", "/x/key.pem", "VITRINE_TLS_ACME_DOMAINS", "shop.example"),
		env("VITRINE_TLS_ACME_DOMAINS", "shop.example", "VITRINE_TLS_ACME_DIRECTORY", "http://acme.example/dir"),
	} {
		if _, err := loadConfig(nil, e); err == nil || !strings.Contains(err.Error(), "tls") {
			t.Errorf("loadConfig: %v, want a tls error", err)
		}
	}
	cfg := defaultConfig()
	cfg.TLS.CertFile, cfg.TLS.KeyFile = "/nonexistent/cert.pem", "/nonexistent/key.pem"
	cfg.HTTP, cfg.Data, cfg.WebRTC.ListenIP, cfg.WebRTC.UDPPort = "127.0.0.1:0", t.TempDir(), "127.0.0.1", 0
	cfg.RTMP.Address, cfg.RTSP.Address = "", ""
	if a, err := start(cfg, testLog{t}); err == nil || !strings.Contains(err.Error(), "cert.pem") {
		if a != nil {
			a.Close()
		}
		t.Errorf("start with a missing certificate: %v", err)
	}
}
