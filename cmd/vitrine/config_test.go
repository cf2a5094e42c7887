package main

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestConfigPrecedence: the example config parses with every key known, and
// environment beats file, flags beat environment.
func TestConfigPrecedence(t *testing.T) {
	c, err := loadConfig([]string{"-config", "../../configs/vitrine.yaml"}, func(string) string { return "" })
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if want := defaultConfig(); !reflect.DeepEqual(normalize(c), normalize(want)) {
		t.Errorf("the example config's values differ from the built-in defaults")
	}

	file := filepath.Join(t.TempDir(), "v.yaml")
	os.WriteFile(file, []byte("http: \":9000\"\nstreams:\n  grace: 3s\nwebrtc:\n  udp_port: 9001\n"), 0o600)
	env := map[string]string{"VITRINE_HTTP": ":9100", "VITRINE_ADMIN_TOKEN": "tok"}
	c, err = loadConfig([]string{"-config", file, "-udp-port", "9200"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTP != ":9100" || c.WebRTC.UDPPort != 9200 || c.Streams.Grace != 3*time.Second || c.AdminToken != "tok" {
		t.Errorf("precedence wrong: %+v", c)
	}

	os.WriteFile(file, []byte("htp: \":9000\"\n"), 0o600)
	if _, err := loadConfig([]string{"-config", file}, func(string) string { return "" }); err == nil {
		t.Error("a misspelt key was accepted")
	}
	if _, err := loadConfig(nil, func(k string) string { return map[string]string{"VITRINE_UDP_PORT": "x"}[k] }); err == nil {
		t.Error("a bad VITRINE_UDP_PORT was accepted")
	}
}

// normalize treats an empty list like a missing one.
func normalize(c Config) Config {
	if len(c.WebRTC.NAT1To1IPs) == 0 {
		c.WebRTC.NAT1To1IPs = nil
	}
	if len(c.WebRTC.ICEServers) == 0 {
		c.WebRTC.ICEServers = nil
	}
	return c
}
