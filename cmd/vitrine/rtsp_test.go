package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// probeRTSP reads url for a few seconds with ffprobe over the given
// transport and returns the codec and frame count of each stream.
func probeRTSP(t *testing.T, url, transport string) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ffprobe", "-v", "error", "-rtsp_transport", transport,
		"-read_intervals", "%+3", "-count_frames",
		"-show_entries", "stream=codec_name,nb_read_frames", "-of", "csv=p=0", url).CombinedOutput()
	if err != nil {
		t.Fatalf("ffprobe %s over %s: %v\n%s", url, transport, err, out)
	}
	got := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(strings.TrimSpace(line), ",")
		if len(f) == 2 {
			n, _ := strconv.Atoi(f[1])
			got[f[0]] += n
		}
	}
	return got
}

// TestRTSPPublishAndRead: ffmpeg publishes H.264 + AAC over RTSP with the
// stream key as password; a WHEP viewer gets H.264 and Opus, and ffprobe
// reads the stream back over RTSP, UDP and TCP, and counts frames.
func TestRTSPPublishAndRead(t *testing.T) {
	a, base := rtmpApp(t, true, nil)
	v := record(t, base, "demo")
	addr := a.proto.rtsp.Addr().String()
	ff := ffmpegPush(t, "rtsp", "rtsp://creator:"+a.demo.Key+"@"+addr+"/demo", "-rtsp_transport", "tcp")
	t.Cleanup(func() { ff.kill(); t.Log(ff.output(), v.count("video"), v.count("audio"), v.lastState()) })
	eventually(t, "viewer gets H.264 and Opus from the RTSP creator", 15*time.Second, func() bool {
		return v.count("video") > 90 && v.count("audio") > 50 && v.lastState() == "live"
	})
	for _, transport := range []string{"udp", "tcp"} {
		got := probeRTSP(t, "rtsp://"+addr+"/demo", transport)
		if got["h264"] < 30 || got["opus"] < 30 {
			t.Errorf("RTSP read over %s: %v, want h264 and opus frames", transport, got)
		} else {
			t.Logf("RTSP read over %s, 3 s: %v", transport, got)
		}
	}
	v.checkDecodes(t, 60)
	if metricLine(t, base, `vitrine_ingest_connections_total{protocol="rtsp",result="accepted"}`) != 1 {
		t.Error("RTSP publish not counted")
	}
}

// TestRTMPToRTSP: a stream published over RTMP is readable over RTSP.
func TestRTMPToRTSP(t *testing.T) {
	a, _ := rtmpApp(t, true, nil)
	ffmpegPush(t, "flv", "rtmp://"+a.proto.rtmp.Addr().String()+"/live/"+a.demo.Key)
	_, st, _ := a.streams.Get("demo")
	eventually(t, "stream live", 15*time.Second, func() bool { s, _ := st.State(); return s == "live" })
	got := probeRTSP(t, "rtsp://"+a.proto.rtsp.Addr().String()+"/demo", "tcp")
	if got["h264"] < 30 || got["opus"] < 30 {
		t.Errorf("RTSP read of an RTMP stream: %v, want h264 and opus frames", got)
	}
}

// TestRTSPBadInput: a wrong key, garbage, an unknown stream: refused,
// counted, and the server goes on.
func TestRTSPBadInput(t *testing.T) {
	a, base := rtmpApp(t, true, func(c *Config) { c.RTMP.ReadTimeout = 2 * time.Second })
	addr := a.proto.rtsp.Addr().String()
	result := func(r string) float64 {
		return max(0, metricLine(t, base, `vitrine_ingest_connections_total{protocol="rtsp",result="`+r+`"}`))
	}

	t.Run("wrong key", func(t *testing.T) {
		ff := ffmpegPush(t, "rtsp", "rtsp://creator:not-the-key-0123456789@"+addr+"/demo", "-rtsp_transport", "tcp")
		select {
		case <-ff.done:
		case <-time.After(10 * time.Second):
			t.Fatal("ffmpeg still publishing with a wrong key")
		}
		eventually(t, "wrong_key counted", 3*time.Second, func() bool { return result("wrong_key") >= 1 })
		_, st, _ := a.streams.Get("demo")
		if s, _ := st.State(); s != "waiting" {
			t.Errorf("stream %s after a wrong key", s)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(bytes.Repeat([]byte("\x00\xffgarbage\r\n"), 300))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 4096)
		for {
			if _, err := c.Read(buf); err != nil {
				var ne net.Error
				if ok := errorsAs(err, &ne); ok && ne.Timeout() {
					t.Fatal("server kept a garbage connection open")
				}
				break
			}
		}
		// gortsplib skips what does not parse as a request; the connection
		// then ends at the read timeout.
		eventually(t, "bad_input or timeout counted", 3*time.Second, func() bool { return result("bad_input")+result("timeout") >= 1 })
	})
	t.Run("stalled", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("OPTIONS rtsp://x/ RTSP/1.0\r\nCSeq: 1")) // never finished
		c.SetReadDeadline(time.Now().Add(6 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("server answered half a request")
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("server kept a stalled connection open")
		}
		eventually(t, "timeout counted", 3*time.Second, func() bool { return result("timeout") >= 2 })
	})
	t.Run("unknown stream", func(t *testing.T) {
		out, err := exec.Command("ffprobe", "-v", "error", "-rtsp_transport", "tcp", "rtsp://"+addr+"/nosuch").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "404") {
			t.Errorf("reading an unknown stream: %v %s", err, out)
		}
	})
}

func errorsAs(err error, target *net.Error) bool {
	for err != nil {
		if ne, ok := err.(net.Error); ok {
			*target = ne
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// tcpProxy forwards connections to target until cut is called, which drops
// every connection open so far (a camera's network going away).
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			p.wg.Go(func() { io.Copy(up, c); up.Close() })
			p.wg.Go(func() { io.Copy(c, up); c.Close() })
		}
	})
	t.Cleanup(func() { ln.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestRTSPPull: a second Vitrine pulls the first one's stream over RTSP as
// a camera would be pulled, its viewers get H.264 and Opus, and when the
// source's connection drops the pull reconnects by itself.
func TestRTSPPull(t *testing.T) {
	src, _ := rtmpApp(t, true, nil)
	ffmpegPush(t, "flv", "rtmp://"+src.proto.rtmp.Addr().String()+"/live/"+src.demo.Key)
	proxy := newTCPProxy(t, src.proto.rtsp.Addr().String())
	_, base := testApp(t, func(c *Config) {
		c.RTMP.ReadTimeout = 2 * time.Second
		c.RTSP.Pull = []PullSource{{Stream: "demo", URL: "rtsp://" + proxy.ln.Addr().String() + "/demo"}}
	})
	v := record(t, base, "demo")
	eventually(t, "pulled stream plays", 20*time.Second, func() bool {
		return v.count("video") > 60 && v.count("audio") > 50 && v.lastState() == "live"
	})
	proxy.cut()
	eventually(t, "viewers told the source dropped", 10*time.Second, func() bool { return v.lastState() == "reconnecting" })
	n := v.count("video")
	eventually(t, "pull reconnected by itself", 20*time.Second, func() bool {
		return v.count("video") > n+60 && v.lastState() == "live"
	})
	if got := metricLine(t, base, `vitrine_ingest_connections_total{protocol="rtsp-pull",result="accepted"}`); got < 2 {
		t.Errorf("pull sessions accepted = %v, want 2", got)
	}
}
