package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// A browser-like offer (H.264 + Opus, sendonly) that Vitrine accepts, used as
// the base the bad cases are made from.
const goodOffer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n" +
	"m=video 9 UDP/TLS/RTP/SAVPF 102\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n" +
	"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n" +
	"a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n" +
	"a=setup:actpass\r\na=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n" +
	"m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=rtcp-mux\r\n" +
	"a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n" +
	"a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n" +
	"a=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n"

// TestBadInput: every malformed or unauthorised request gets the status a
// client can act on and a reason, and nothing panics.
func TestBadInput(t *testing.T) {
	a, base := testApp(t, nil)
	key := a.demo.Key
	admin := a.cfg.AdminToken
	pcmuOnly := strings.NewReplacer("H264/90000", "VP7/90000", "opus/48000/2", "PCMU/8000").Replace(goodOffer)
	vp8Viewer := strings.NewReplacer("H264/90000", "VP8/90000", "a=sendonly", "a=recvonly").Replace(goodOffer)

	cases := []struct {
		name, method, path, auth, ctype, body string
		want                                  int
		code                                  string
	}{
		{"whip without key", "POST", "/whip/demo", "", "application/sdp", goodOffer, 401, "unauthorized"},
		{"whip wrong key", "POST", "/whip/demo", "not-the-key", "application/sdp", goodOffer, 403, "wrong_key"},
		{"whip unknown stream", "POST", "/whip/nope", key, "application/sdp", goodOffer, 404, "unknown_stream"},
		{"whip wrong content type", "POST", "/whip/demo", key, "application/json", goodOffer, 415, "unsupported_media_type"},
		{"whip huge body", "POST", "/whip/demo", key, "application/sdp", goodOffer + strings.Repeat("a=x\r\n", 20000), 413, "too_large"},
		{"whip empty body", "POST", "/whip/demo", key, "application/sdp", "", 400, "empty_body"},
		{"whip malformed sdp", "POST", "/whip/demo", key, "application/sdp", "this is not sdp", 400, "bad_offer"},
		{"whip no usable codec", "POST", "/whip/demo", key, "application/sdp", pcmuOnly, 400, "bad_offer"},
		{"whip offer without media", "POST", "/whip/demo", key, "application/sdp", "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", 400, "bad_offer"},
		{"whep unknown stream", "POST", "/whep/nope", "", "application/sdp", goodOffer, 404, "unknown_stream"},
		{"whep wrong content type", "POST", "/whep/demo", "", "text/plain", goodOffer, 415, "unsupported_media_type"},
		{"whep malformed sdp", "POST", "/whep/demo", "", "application/sdp", "m=garbage", 400, "bad_offer"},
		{"whep codec the stream does not send", "POST", "/whep/demo", "", "application/sdp", vp8Viewer, 400, "bad_offer"},
		{"patch unknown session", "PATCH", "/whip/demo/123", key, "application/trickle-ice-sdpfrag", "a=ice-ufrag:x\r\n", 404, "unknown_session"},
		{"delete unknown session", "DELETE", "/whep/demo/123", "", "", "", 404, "unknown_session"},
		{"api without token", "GET", "/api/v1/streams", "", "", "", 401, "unauthorized"},
		{"api wrong token", "GET", "/api/v1/streams", "nope", "", "", 403, "forbidden"},
		{"create bad name", "POST", "/api/v1/streams", admin, "application/json", `{"name":"Bad Name!"}`, 400, "invalid"},
		{"create duplicate", "POST", "/api/v1/streams", admin, "application/json", `{"name":"demo"}`, 409, "stream_exists"},
		{"create bad json", "POST", "/api/v1/streams", admin, "application/json", `{"name":`, 400, "invalid_json"},
		{"create unknown field", "POST", "/api/v1/streams", admin, "application/json", `{"nmae":"x"}`, 400, "invalid_json"},
		{"create two bodies", "POST", "/api/v1/streams", admin, "application/json", `{"name":"twice"}{"name":"again"}`, 400, "invalid_json"},
		{"create trailing brace", "POST", "/api/v1/streams", admin, "application/json", `{"name":"brace"}}`, 400, "invalid_json"},
		{"create short key", "POST", "/api/v1/streams", admin, "application/json", `{"name":"x","key":"short"}`, 400, "invalid"},
		{"delete unknown stream", "DELETE", "/api/v1/streams/nope", admin, "", "", 404, "unknown_stream"},
		{"status unknown stream", "GET", "/api/v1/streams/nope", "", "", "", 404, "unknown_stream"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
			if c.auth != "" {
				req.Header.Set("Authorization", "Bearer "+c.auth)
			}
			if c.ctype != "" {
				req.Header.Set("Content-Type", c.ctype)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, _ := io.ReadAll(res.Body)
			if res.StatusCode != c.want {
				t.Fatalf("status %d, want %d (body %s)", res.StatusCode, c.want, body)
			}
			var e struct {
				Error struct{ Code, Message string }
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != c.code || e.Error.Message == "" {
				t.Fatalf("body %s: want error code %q with a message", body, c.code)
			}
		})
	}

	// The server is still fine: the demo stream is waiting and a good
	// viewer offer is answered.
	if s := get(t, base+"/api/v1/streams/demo"); !strings.Contains(s, `"state":"waiting"`) {
		t.Errorf("demo stream after bad input: %s", s)
	}
	res, err := http.Post(base+"/whep/demo", "application/sdp", strings.NewReader(strings.ReplaceAll(goodOffer, "a=sendonly", "a=recvonly")))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Errorf("good WHEP offer after bad input: %d", res.StatusCode)
	}
}

// TestStreamsAPI: create, list, rotate the key, delete; definitions survive
// a restart.
func TestStreamsAPI(t *testing.T) {
	dir := t.TempDir()
	a, base := testApp(t, func(c *Config) { c.Data = dir })
	admin := a.cfg.AdminToken
	do := func(method, path, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+admin)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(res.Body).Decode(&out)
		return res.StatusCode, out
	}
	code, created := do("POST", "/api/v1/streams", `{"name":"shop-1"}`)
	if code != 201 || created["key"] == "" || created["state"] != "waiting" {
		t.Fatalf("create: %d %v", code, created)
	}
	code, rotated := do("POST", "/api/v1/streams/shop-1/key", "")
	if code != 200 || rotated["key"] == created["key"] {
		t.Fatalf("rotate: %d %v", code, rotated)
	}
	// The old key no longer publishes.
	req, _ := http.NewRequest("POST", base+"/whip/shop-1", strings.NewReader(goodOffer))
	req.Header.Set("Content-Type", "application/sdp")
	req.Header.Set("Authorization", "Bearer "+created["key"].(string))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 {
		t.Errorf("old key after rotation: %d, want 403", res.StatusCode)
	}
	code, list := do("GET", "/api/v1/streams", "")
	if code != 200 || len(list["streams"].([]any)) != 2 {
		t.Fatalf("list: %d %v", code, list)
	}
	a.Close()

	// Restart on the same data directory: same streams, same keys.
	b, base2 := testApp(t, func(c *Config) { c.Data = dir })
	base = base2
	admin = b.cfg.AdminToken
	def, _, ok := b.streams.Get("shop-1")
	if !ok || def.Key != rotated["key"] {
		t.Fatalf("after restart: %+v %v", def, ok)
	}
	if b.demo.Key != a.demo.Key {
		t.Errorf("demo key changed across restart")
	}
	if code, _ := do("DELETE", "/api/v1/streams/shop-1", ""); code != 204 {
		t.Errorf("delete: %d", code)
	}
	if code, _ := do("GET", "/api/v1/streams/shop-1", ""); code != 404 {
		t.Errorf("get after delete: %d", code)
	}
}
