package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vitrine-live/vitrine/overlay"
	"github.com/vitrine-live/vitrine/signaling/client"
)

// chatTexts lists the texts of every chat message a shopper received.
func (s *shopper) chatTexts() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, m := range s.msgs {
		if m["type"] == "chat" {
			for _, c := range m["messages"].([]any) {
				out = append(out, c.(map[string]any)["text"].(string))
			}
		}
	}
	return out
}

// sawText waits until the shopper received a chat message with text.
func (s *shopper) sawText(t *testing.T, text string) map[string]any {
	t.Helper()
	var found map[string]any
	eventually(t, fmt.Sprintf("%s gets chat %q", s.name, text), 5*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, m := range s.msgs {
			if m["type"] != "chat" {
				continue
			}
			for _, c := range m["messages"].([]any) {
				if c.(map[string]any)["text"] == text {
					found = c.(map[string]any)
					return true
				}
			}
		}
		return false
	})
	return found
}

// reply sends a message and waits for the answer of one of the types.
func (s *shopper) reply(t *testing.T, v map[string]any, types ...string) map[string]any {
	t.Helper()
	s.mu.Lock()
	skip := len(s.msgs)
	s.mu.Unlock()
	s.send(t, v)
	var found map[string]any
	eventually(t, fmt.Sprintf("%s: answer to %v", s.name, v), 5*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, m := range s.msgs[skip:] {
			for _, typ := range types {
				if m["type"] == typ {
					found = m
					return true
				}
			}
		}
		return false
	})
	return found
}

// httpChatter is a viewer without WebRTC: the HTTP twins, with its token.
type httpChatter struct {
	base, token string
}

func (h *httpChatter) do(t *testing.T, method, path string, body any) (int, map[string]any, http.Header) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, h.base+path, strings.NewReader(string(b)))
	req.Header.Set("Content-Type", "application/json")
	if h.token != "" {
		req.Header.Set("Vitrine-Viewer", h.token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if tok := res.Header.Get("Vitrine-Viewer"); tok != "" {
		h.token = tok
	}
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out, res.Header
}

func errCode(m map[string]any) string {
	if e, ok := m["error"].(map[string]any); ok {
		return e["code"].(string)
	}
	return ""
}

// sseChat reads a stream's SSE and keeps its chat texts.
type sseChat struct {
	mu    sync.Mutex
	texts []string
}

func readSSEChat(t *testing.T, url string) *sseChat {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	out := &sseChat{}
	go func() {
		defer res.Body.Close()
		sc := bufio.NewScanner(res.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var m struct {
				Type     string `json:"type"`
				Messages []struct {
					Text string `json:"text"`
				} `json:"messages"`
			}
			if json.Unmarshal([]byte(data), &m) == nil && m.Type == "chat" {
				out.mu.Lock()
				for _, c := range m.Messages {
					out.texts = append(out.texts, c.Text)
				}
				out.mu.Unlock()
			}
		}
	}()
	return out
}

func (s *sseChat) has(text string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, x := range s.texts {
		if x == text {
			return true
		}
	}
	return false
}

// TestChat: two data-channel viewers, one HTTP-only viewer, an SSE reader,
// the host and a moderator. Names, messages as plain text, questions tied
// to the card on screen, reactions coalesced, and every moderation action
// enforced on the data channel and on the HTTP twin; what moderators did
// survives a restart with the chat history.
func TestChat(t *testing.T) {
	data := t.TempDir()
	a, base := testApp(t, func(c *Config) { c.Data = data })
	ctx := context.Background()
	if _, err := a.store.CreateProduct(ctx, overlay.Product{SKU: "mug-1", Title: "Mug", PriceMinor: 1500, Currency: "EUR", Stock: 10, Active: true}); err != nil {
		t.Fatal(err)
	}
	api, err := client.NewAPI(true)
	if err != nil {
		t.Fatal(err)
	}
	key := a.demo.Key
	api1 := base + "/api/v1/streams/demo"
	ada, bob := shop(t, api, base, "demo", "ada"), shop(t, api, base, "demo", "bob")
	cleo := &httpChatter{base: base}
	sse := readSSEChat(t, api1+"/events")
	if snap := ada.find(t, "chat.snapshot", nil); snap["you"].(map[string]any)["name"] != nil {
		t.Fatalf("a new viewer has a name: %v", snap)
	}

	// Names.
	if r := ada.reply(t, map[string]any{"type": "chat", "text": "hi"}, "chat.result", "error"); r["code"] != "name_required" {
		t.Fatalf("chat without a name: %v", r)
	}
	if r := ada.reply(t, map[string]any{"type": "chat.name", "name": "Ada"}, "chat.name.result", "error"); r["name"] != "Ada" {
		t.Fatalf("name Ada: %v", r)
	}
	for name, code := range map[string]string{"ADA": "name_taken", "x": "invalid_name", "<b>Bob</b>": "invalid_name", "Host": "invalid_name"} {
		if r := bob.reply(t, map[string]any{"type": "chat.name", "name": name}, "chat.name.result", "error"); r["code"] != code {
			t.Errorf("name %q: %v, want %s", name, r, code)
		}
	}
	bob.reply(t, map[string]any{"type": "chat.name", "name": "Bob"}, "chat.name.result")
	if r := bob.reply(t, map[string]any{"type": "chat.name", "name": "Bobby"}, "chat.name.result", "error"); r["code"] != "name_locked" {
		t.Errorf("second name change at once: %v", r)
	}
	if code, out, _ := cleo.do(t, "PUT", "/api/v1/chat/name", map[string]string{"name": "Cleo"}); code != 200 || out["name"] != "Cleo" || cleo.token == "" {
		t.Fatalf("HTTP name: %d %v token %q", code, out, cleo.token)
	}

	// Messages reach everyone as typed: plain text, never interpreted.
	xss := `<img src=x onerror="alert(1)"> & <script>alert(2)</script>`
	if r := ada.reply(t, map[string]any{"type": "chat", "text": xss, "key": "k1"}, "chat.result", "error"); r["status"] != "visible" || r["key"] != "k1" {
		t.Fatalf("chat: %v", r)
	}
	m := bob.sawText(t, xss)
	if m["name"] != "Ada" || m["viewer"] == "" || m["ts"] == nil {
		t.Errorf("message as bob got it: %v", m)
	}
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "hello from http\nline two"}); code != 201 || out["status"] != "visible" {
		t.Fatalf("HTTP chat: %d %v", code, out)
	}
	ada.sawText(t, "hello from http line two")
	if code, _, _ := postJSON(t, api1+"/chat", key, map[string]any{"text": "Welcome, everyone!"}); code != 201 {
		t.Fatalf("host chat: %d", code)
	}
	if m := bob.sawText(t, "Welcome, everyone!"); m["role"] != "host" || m["name"] != "Host" {
		t.Errorf("host message: %v", m)
	}
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": strings.Repeat("é", 301)}); code != 400 || errCode(out) != "invalid" {
		t.Errorf("301 characters: %d %v", code, out)
	}
	eventually(t, "the SSE reader gets the chat", 5*time.Second, func() bool { return sse.has(xss) && sse.has("Welcome, everyone!") })

	// Reactions: 24 taps from three viewers come as a few counts.
	bob.mu.Lock()
	skip := len(bob.msgs)
	bob.mu.Unlock()
	for range 8 {
		ada.send(t, map[string]any{"type": "react", "value": "heart"})
		bob.send(t, map[string]any{"type": "react", "value": "fire"})
		if code, _, _ := cleo.do(t, "POST", "/api/v1/streams/demo/reactions", map[string]string{"value": "heart"}); code != 202 {
			t.Fatalf("HTTP reaction: %d", code)
		}
	}
	start := time.Now()
	var batches, hearts, fires int
	eventually(t, "bob counts all 24 taps", 5*time.Second, func() bool {
		bob.mu.Lock()
		defer bob.mu.Unlock()
		batches, hearts, fires = 0, 0, 0
		for _, m := range bob.msgs[skip:] {
			if c := reactionCounts(m); c != nil {
				batches++
				h, _ := c["heart"].(float64)
				f, _ := c["fire"].(float64)
				hearts, fires = hearts+int(h), fires+int(f)
			}
		}
		return hearts == 16 && fires == 8
	})
	if limit := int(time.Since(start)/(250*time.Millisecond)) + 2; batches > limit {
		t.Errorf("%d reaction messages in %s: more than one per 250 ms", batches, time.Since(start))
	}
	t.Logf("24 taps reached bob as %d reactions messages", batches)

	// Questions are tied to the card on screen; the host answers.
	if code, _, _ := postJSON(t, api1+"/cues", key, map[string]any{"type": "card.show", "sku": "mug-1"}); code != 201 {
		t.Fatal("card.show")
	}
	q := ada.reply(t, map[string]any{"type": "chat", "text": "Is it dishwasher safe?", "question": true}, "chat.result")
	if m := bob.sawText(t, "Is it dishwasher safe?"); m["sku"] != "mug-1" || m["question"] != true {
		t.Errorf("question as bob got it: %v", m)
	}
	view := getJSON(t, api1+"/chat", key)
	groups := view["questions"].([]any)
	if len(groups) != 1 || groups[0].(map[string]any)["sku"] != "mug-1" || len(groups[0].(map[string]any)["messages"].([]any)) != 1 {
		t.Fatalf("question queue: %v", groups)
	}
	if code, _, _ := postJSON(t, api1+"/chat/actions", key, map[string]any{"action": "answer", "message": q["id"]}); code != 200 {
		t.Fatalf("answer: %d", code)
	}
	bob.find(t, "chat.answered", func(m map[string]any) bool { return m["id"] == q["id"] })
	if groups := getJSON(t, api1+"/chat", key)["questions"].([]any); len(groups) != 0 {
		t.Errorf("answered question still queued: %v", groups)
	}

	// A moderator key moderates, and does nothing else.
	code, mk, _ := postJSON(t, api1+"/chat/moderator-key", key, nil)
	if code != 201 {
		t.Fatalf("moderator key: %d %v", code, mk)
	}
	mod := mk["key"].(string)
	if view := getJSON(t, api1+"/chat", mod); view["role"] != "moderator" {
		t.Errorf("moderator view role %v", view["role"])
	}
	if code := getStatus(t, api1+"/orders", mod); code != 403 {
		t.Errorf("moderator key reads orders: %d", code)
	}
	if code, _, _ := postJSON(t, api1+"/cues", mod, map[string]any{"type": "card.hide"}); code != 403 {
		t.Errorf("moderator key sends a cue: %d", code)
	}
	act := func(by string, body map[string]any) {
		t.Helper()
		if code, out, _ := postJSON(t, api1+"/chat/actions", by, body); code != 200 {
			t.Fatalf("%v: %d %v", body, code, out)
		}
	}

	// Delete: gone for everyone, and for a late joiner.
	del := ada.reply(t, map[string]any{"type": "chat", "text": "buy followers at spam.example"}, "chat.result")
	bob.sawText(t, "buy followers at spam.example")
	act(mod, map[string]any{"action": "delete", "message": del["id"]})
	bob.find(t, "chat.delete", func(m map[string]any) bool { return m["ids"].([]any)[0] == del["id"] })
	late := shop(t, api, base, "demo", "late")
	snap := late.find(t, "chat.snapshot", nil)
	var texts []string
	for _, c := range snap["messages"].([]any) {
		texts = append(texts, c.(map[string]any)["text"].(string))
	}
	if strings.Contains(strings.Join(texts, "|"), "spam.example") || !strings.Contains(strings.Join(texts, "|"), "dishwasher") || texts[0] != xss {
		t.Errorf("late joiner's history: %q", texts)
	}

	// Mute: on the data channel and over HTTP, with how long.
	adaViewer := bob.sawText(t, xss)["viewer"].(string)
	cleoViewer := ada.sawText(t, "hello from http line two")["viewer"].(string)
	act(mod, map[string]any{"action": "mute", "viewer": adaViewer, "minutes": 2})
	if r := ada.reply(t, map[string]any{"type": "chat", "text": "am I muted?"}, "chat.result", "error"); r["code"] != "muted" || r["retry_after_ms"].(float64) < 100_000 {
		t.Errorf("muted viewer posts: %v", r)
	}
	act(mod, map[string]any{"action": "mute", "viewer": cleoViewer, "minutes": 1})
	if code, out, h := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "muted?"}); code != 429 || errCode(out) != "muted" || h.Get("Retry-After") == "" {
		t.Errorf("muted HTTP viewer: %d %v Retry-After %q", code, out, h.Get("Retry-After"))
	}
	act(key, map[string]any{"action": "unmute", "viewer": adaViewer})
	act(key, map[string]any{"action": "unmute", "viewer": cleoViewer})

	// Slow mode.
	// Slow mode counts from a viewer's last message, so one who just spoke
	// waits too.
	act(key, map[string]any{"action": "slow", "seconds": 2})
	bob.find(t, "chat.settings", func(m map[string]any) bool { return m["slow_s"] == 2.0 })
	time.Sleep(2100 * time.Millisecond)
	ada.reply(t, map[string]any{"type": "chat", "text": "slow one"}, "chat.result")
	if r := ada.reply(t, map[string]any{"type": "chat", "text": "slow two"}, "chat.result", "error"); r["code"] != "slow_mode" || r["retry_after_ms"].(float64) > 2000 {
		t.Errorf("second message in slow mode: %v", r)
	}
	cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "http slow one"})
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "http slow two"}); code != 429 || errCode(out) != "slow_mode" {
		t.Errorf("HTTP in slow mode: %d %v", code, out)
	}
	act(key, map[string]any{"action": "slow", "seconds": 0})

	// Word filter: masked, then held.
	act(key, map[string]any{"action": "filter", "words": []string{"Darn"}, "mode": "mask"})
	bob.reply(t, map[string]any{"type": "chat", "text": "darn, it is DARN nice"}, "chat.result")
	ada.sawText(t, "****, it is **** nice")
	act(key, map[string]any{"action": "filter", "words": []string{"darn"}, "mode": "hold"})
	held := bob.reply(t, map[string]any{"type": "chat", "text": "darn again"}, "chat.result")
	if held["status"] != "held" {
		t.Errorf("filtered message with hold: %v", held)
	}
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "darn from http"}); code != 201 || out["status"] != "held" {
		t.Errorf("HTTP filtered with hold: %d %v", code, out)
	}
	act(key, map[string]any{"action": "filter", "words": []string{}, "mode": "mask"})

	// Calm mode holds everything from viewers, not the host.
	act(mod, map[string]any{"action": "calm", "on": true})
	if r := ada.reply(t, map[string]any{"type": "chat", "text": "calm?"}, "chat.result"); r["status"] != "held" {
		t.Errorf("calm mode: %v", r)
	}
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "calm from http"}); code != 201 || out["status"] != "held" {
		t.Errorf("HTTP in calm mode: %d %v", code, out)
	}
	act(mod, map[string]any{"action": "calm", "on": false})
	view = getJSON(t, api1+"/chat", mod)
	var heldIDs []string
	for _, h := range view["held"].([]any) {
		heldIDs = append(heldIDs, h.(map[string]any)["id"].(string))
	}
	if len(heldIDs) != 4 {
		t.Fatalf("held queue: %v", view["held"])
	}
	act(mod, map[string]any{"action": "approve", "message": held["id"]})
	ada.sawText(t, "darn again")
	for _, id := range heldIDs[1:] {
		act(mod, map[string]any{"action": "reject", "message": id})
	}
	time.Sleep(300 * time.Millisecond)
	for _, never := range []string{"darn from http", "calm?", "calm from http"} {
		for _, v := range []*shopper{ada, bob, late} {
			if strings.Contains(strings.Join(v.chatTexts(), "|"), never) {
				t.Errorf("%s saw rejected %q", v.name, never)
			}
		}
	}

	// Ban: no chat, no buying, their messages gone.
	bobViewer := ada.sawText(t, "darn again")["viewer"].(string)
	act(mod, map[string]any{"action": "ban", "viewer": bobViewer})
	ada.find(t, "chat.delete", func(m map[string]any) bool { return len(m["ids"].([]any)) >= 2 })
	if r := bob.reply(t, map[string]any{"type": "chat", "text": "let me in"}, "chat.result", "error"); r["code"] != "banned" {
		t.Errorf("banned viewer posts: %v", r)
	}
	if r := bob.reply(t, map[string]any{"type": "buy", "sku": "mug-1", "qty": 1, "key": "banned-buy-1"}, "buy.result", "error"); r["code"] != "banned" {
		t.Errorf("banned viewer buys: %v", r)
	}
	act(mod, map[string]any{"action": "ban", "viewer": cleoViewer})
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "x"}); code != 403 || errCode(out) != "banned" {
		t.Errorf("banned HTTP chat: %d %v", code, out)
	}
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/buy", map[string]any{"sku": "mug-1", "qty": 1, "key": "banned-buy-2"}); code != 403 || errCode(out) != "banned" {
		t.Errorf("banned HTTP buy: %d %v", code, out)
	}
	if r := ada.reply(t, map[string]any{"type": "buy", "sku": "mug-1", "qty": 1, "key": "fine-buy-1"}, "buy.result", "error"); r["type"] != "buy.result" {
		t.Errorf("a viewer not banned buys: %v", r)
	}

	// Pin, then the log, then a restart keeps all of it.
	pin := ada.reply(t, map[string]any{"type": "chat", "text": "Free shipping over 50 EUR!"}, "chat.result")
	act(key, map[string]any{"action": "pin", "message": pin["id"]})
	late.find(t, "chat.pin", func(m map[string]any) bool { return m["message"] != nil })
	log := getJSON(t, api1+"/chat/log", key)["actions"].([]any)
	byAction := map[string]string{}
	for _, e := range log {
		e := e.(map[string]any)
		byAction[e["action"].(string)] = e["by"].(string)
	}
	for action, by := range map[string]string{"pin": "host", "ban": "moderator", "calm": "moderator", "mute": "moderator", "slow": "host",
		"filter": "host", "delete": "moderator", "answer": "host", "approve": "moderator", "reject": "moderator", "moderator_key": "host"} {
		if byAction[action] != by {
			t.Errorf("log: %s by %q, want %s (%v)", action, byAction[action], by, byAction)
		}
	}
	if v := metricValue(t, base, `vitrine_chat_moderation_total{action="ban"}`); v != 2 {
		t.Errorf("ban metric %v", v)
	}

	a.Close()
	_, base = testApp(t, func(c *Config) { c.Data = data })
	again := shop(t, api, base, "demo", "again")
	snap = again.find(t, "chat.snapshot", nil)
	texts = nil
	for _, c := range snap["messages"].([]any) {
		texts = append(texts, c.(map[string]any)["text"].(string))
	}
	all := strings.Join(texts, "|")
	if snap["pinned"] == nil || snap["pinned"].(map[string]any)["text"] != "Free shipping over 50 EUR!" ||
		!strings.Contains(all, "dishwasher") || strings.Contains(all, "spam.example") || strings.Contains(all, "darn again") {
		t.Errorf("after restart: pinned %v, history %q", snap["pinned"], texts)
	}
	cleo.base = base
	if code, out, _ := cleo.do(t, "POST", "/api/v1/streams/demo/chat", map[string]any{"text": "x"}); code != 403 || errCode(out) != "banned" {
		t.Errorf("ban after restart: %d %v", code, out)
	}
}

// getAuth GETs url with a bearer token.
func getAuth(t *testing.T, url, token string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func getJSON(t *testing.T, url, token string) map[string]any {
	t.Helper()
	res := getAuth(t, url, token)
	defer res.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil || res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, res.StatusCode, err)
	}
	return out
}

func getStatus(t *testing.T, url, token string) int {
	t.Helper()
	res := getAuth(t, url, token)
	res.Body.Close()
	return res.StatusCode
}
